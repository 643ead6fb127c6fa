"""The mutating admission webhook, over HTTPS with real admission.k8s.io/v1 AdmissionReviews:
GPU pods in governed namespaces wait for admission even when created without the gate."""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.governance.policy import Policy, parse_policy
from coordinator.pki import CertificateAuthority, issue_key_and_certificate
from coordinator.webhook_server import PATH, AdmissionWebhook, serving_context
from gpuwarden_common.flags import HttpAddress
from gpuwarden_common.http import serve
from tests.brokers import free_port
from tests.fakekube import json_patch

GATE = "gpuwarden.io/admission"
POLICY = """
defaultPriorityClass: training
priorityClasses: [{name: training, weight: 70}, {name: inference, weight: 100}]
teams:
  - {name: research, namespace: research, quota: {gpus: 8}}
"""


def policy(text: str = POLICY) -> Policy:
    return parse_policy(text, "test-policy")


def admission_review(pod: dict[str, Any], namespace: str = "research") -> dict[str, Any]:
    """What the API server sends for a pod CREATE (admission.k8s.io/v1)."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def gpu_pod(name: str = "train-0", gpus: int = 2, **metadata: Any) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **metadata},
        "spec": {"containers": [{"name": "main", "image": "trainer", "resources": resources}]},
    }


class Webhook:
    def __init__(self, url: str, ca: CertificateAuthority, webhook: AdmissionWebhook) -> None:
        self.url = url
        self.webhook = webhook
        self.trust = ssl.create_default_context(cadata=ca.pem.decode())

    async def review(self, review: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.post(
            self.url + PATH, json=review, ssl=self.trust
        ) as response:
            assert response.status == 200
            answer: dict[str, Any] = await response.json()
            return answer

    async def admitted(self, pod: dict[str, Any], namespace: str = "research") -> dict[str, Any]:
        """The pod as the API server stores it after applying the webhook's patch."""
        review = admission_review(pod, namespace)
        answer = await self.review(review)
        response = answer["response"]
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert response["uid"] == review["request"]["uid"]
        assert response["allowed"] is True
        if "patch" not in response:
            return pod
        assert response["patchType"] == "JSONPatch"
        patched: dict[str, Any] = json_patch(pod, json.loads(base64.b64decode(response["patch"])))
        return patched


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
async def webhook(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[Webhook]:
    key, cert = issue_key_and_certificate(ca, server_names=["localhost"], lifetime_s=3600)
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    served = AdmissionWebhook(policy())
    port = free_port()
    runner = await serve(served.app(), HttpAddress("127.0.0.1", port), "--webhook",
                         serving_context(tmp_path / "tls.crt", tmp_path / "tls.key"))
    try:
        yield Webhook(f"https://localhost:{port}", ca, served)
    finally:
        await runner.cleanup()


def gates(pod: dict[str, Any]) -> list[str]:
    return [g["name"] for g in pod["spec"].get("schedulingGates", [])]


def labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels", {}))


async def test_a_gpu_pod_created_without_the_gate_in_a_governed_namespace_gets_it(
    webhook: Webhook,
) -> None:
    pod = await webhook.admitted(gpu_pod("train-0"))
    assert gates(pod) == [GATE]
    assert labels(pod) == {"gpuwarden.io/task": "train-0",
                           "gpuwarden.io/priority-class": "training"}


async def test_what_the_author_set_is_kept(webhook: Webhook) -> None:
    pod = gpu_pod("serve-0", labels={"gpuwarden.io/task": "serving",
                                     "gpuwarden.io/priority-class": "inference"})
    pod["spec"]["schedulingGates"] = [{"name": "other.io/gate"}]
    admitted = await webhook.admitted(pod)
    assert gates(admitted) == ["other.io/gate", GATE]
    assert labels(admitted) == {"gpuwarden.io/task": "serving",
                                "gpuwarden.io/priority-class": "inference"}


async def test_a_pod_already_gated_and_labelled_is_not_patched(webhook: Webhook) -> None:
    pod = gpu_pod(labels={"gpuwarden.io/task": "t", "gpuwarden.io/priority-class": "training"})
    pod["spec"]["schedulingGates"] = [{"name": GATE}]
    answer = await webhook.review(admission_review(pod))
    assert "patch" not in answer["response"]


async def test_a_job_pod_belongs_to_its_jobs_task(webhook: Webhook) -> None:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "llm-pretrain", "uid": "u",
             "controller": True}
    pod = gpu_pod(generateName="llm-pretrain-", ownerReferences=[owner])
    del pod["metadata"]["name"]
    assert labels(await webhook.admitted(pod))["gpuwarden.io/task"] == "llm-pretrain"


@pytest.mark.parametrize(
    ("pod", "namespace"),
    [
        (gpu_pod(gpus=0), "research"),  # no GPUs: not governed
        (gpu_pod(), "default"),  # a namespace no team has
        (gpu_pod(labels={"gpuwarden.io/admission": "skip"}), "research"),  # the opt-out
    ],
    ids=["no-gpus", "ungoverned-namespace", "opt-out-label"],
)
async def test_other_pods_are_let_through_unchanged(
    webhook: Webhook, pod: dict[str, Any], namespace: str
) -> None:
    answer = await webhook.review(admission_review(pod, namespace))
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]


async def test_a_reloaded_policy_governs_its_new_namespace_at_once(webhook: Webhook) -> None:
    nlp = "  - {name: nlp, namespace: nlp, quota: {gpus: 4}}\n"
    webhook.webhook.set_policy(policy(POLICY + nlp))
    assert gates(await webhook.admitted(gpu_pod(), "nlp")) == [GATE]


async def test_the_webhook_is_trusted_only_through_the_gpuwarden_ca(webhook: Webhook) -> None:
    review = admission_review(gpu_pod())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(webhook.url + PATH, json=review,
                               ssl=ssl.create_default_context())  # the system's CAs only
        with pytest.raises(aiohttp.ClientError):
            await session.post(webhook.url.replace("https", "http") + PATH, json=review)


async def test_a_body_that_is_no_admission_review_is_refused(webhook: Webhook) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        webhook.url + PATH, data=b"nope", ssl=webhook.trust
    ) as response:
        assert response.status == 400
