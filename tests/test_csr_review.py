"""The signer's decision on one request, pure: who asked, from which pod, for which name."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from coordinator.csr_review import (
    NODE_NAME_EXTRA,
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    Approve,
    Deny,
    review,
)
from gpuwarden_common.certs import SIGNER_NAME, csr_pem, new_key

ACCOUNT = ("gpuwarden", "gpuwarden-agent")


def csr(cn: str = "node-a", **spec: Any) -> dict[str, Any]:
    body = {
        "signerName": SIGNER_NAME,
        "request": base64.b64encode(csr_pem(new_key(), cn)).decode(),
        "usages": ["digital signature", "client auth"],
        "username": "system:serviceaccount:gpuwarden:gpuwarden-agent",
        "extra": {POD_NAME_EXTRA: ["agent-x"], POD_UID_EXTRA: ["uid-1"],
                  NODE_NAME_EXTRA: ["node-a"]},
    }
    body.update(spec)
    return {"metadata": {"name": "r"}, "spec": body, "status": {}}


def pod(node: str = "node-a", uid: str = "uid-1", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "agent-x", "uid": uid, **meta},
            "spec": {"nodeName": node, "serviceAccountName": "gpuwarden-agent"}}


def decide(request: dict[str, Any], the_pod: dict[str, Any] | None = None,
           node_exists: bool = True) -> Approve | Deny:
    return review(request, pod() if the_pod is None else the_pod, node_exists,
                  agent_account=ACCOUNT, max_lifetime_s=86400)


def reason(result: Approve | Deny) -> str:
    assert isinstance(result, Deny), result
    return result.reason


def test_the_agent_pod_on_the_named_node_is_approved() -> None:
    result = decide(csr())
    assert isinstance(result, Approve) and result.node == "node-a"


def test_a_shorter_requested_lifetime_is_honoured_and_a_longer_one_capped() -> None:
    assert isinstance(short := decide(csr(expirationSeconds=3600)), Approve)
    assert isinstance(long := decide(csr(expirationSeconds=10**7)), Approve)
    assert (short.lifetime_s, long.lifetime_s) == (3600, 86400)


@pytest.mark.parametrize(
    ("request_", "the_pod", "expected"),
    [
        (csr("node-b"), None, "NodeMismatch"),
        (csr(username="system:serviceaccount:team:default"), None, "NotAnAgent"),
        (csr(extra={}), None, "NoPodBinding"),
        (csr(signerName="kubernetes.io/kube-apiserver-client"), None, "WrongSigner"),
        (csr("gpuwarden-coordinator"), None, "BadSubject"),
        (csr("a/b"), None, "BadSubject"),
        (csr(usages=["server auth"]), None, "BadUsages"),
        (csr(request="bm90IGEgY3Ny"), None, "BadRequest"),
        (csr(), pod(uid="uid-2"), "PodGone"),
        (csr(), pod(deletionTimestamp="2026-01-01T00:00:00Z"), "PodGone"),
        (csr(), pod(node="node-b"), "NodeMismatch"),
    ],
)
def test_a_request_is_denied_with_its_reason(
    request_: dict[str, Any], the_pod: dict[str, Any] | None, expected: str
) -> None:
    assert reason(decide(request_, the_pod)) == expected


def test_a_request_from_a_pod_that_no_longer_exists_is_denied() -> None:
    assert reason(review(csr(), None, True, agent_account=ACCOUNT, max_lifetime_s=60)) == (
        "PodGone"
    )


def test_a_request_for_a_node_that_no_longer_exists_is_denied() -> None:
    assert reason(decide(csr(), node_exists=False)) == "NodeGone"


def test_a_token_naming_another_node_than_the_pod_is_denied() -> None:
    request = csr(extra={POD_NAME_EXTRA: ["agent-x"], POD_UID_EXTRA: ["uid-1"],
                         NODE_NAME_EXTRA: ["node-b"]})
    assert reason(decide(request)) == "NodeMismatch"
