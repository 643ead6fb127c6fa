"""Whether to sign an agent's CertificateSigningRequest: pure, over the JSON the API server
gave (the CSR, the requesting pod, whether the node exists).

The guarantee: a certificate for CN = node N is issued only to a request that the API server
attributes to the agents' ServiceAccount *and* to a live agent pod (by name and uid, from the
bound token's ``authentication.kubernetes.io/pod-*`` extras) that runs on N. An agent on node
A that asks for CN = B is denied, whatever it writes in its request, because the API server,
not the agent, fills in who asked. The node must exist, so a removed node gets no renewal and
its last certificate simply expires.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gpuwarden_common.certs import COORDINATOR_CN, SIGNER_NAME, common_name
from gpuwarden_common.wire import valid_name

POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA: Final = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA: Final = "authentication.kubernetes.io/node-name"  # Kubernetes 1.30+
ALLOWED_USAGES: Final = frozenset({"client auth", "digital signature", "key encipherment"})
_CURVES: Final = (ec.SECP256R1, ec.SECP384R1)

Json = Mapping[str, Any]


@dataclass(frozen=True)
class Approve:
    node: str
    public_key: ec.EllipticCurvePublicKey
    lifetime_s: float


@dataclass(frozen=True)
class Deny:
    reason: str  # CamelCase, for the CSR condition
    message: str


@dataclass(frozen=True)
class Requester:
    """Who asked, as the API server recorded it on the CSR."""

    username: str
    pod_name: str | None
    pod_uid: str | None
    node_name: str | None

    @classmethod
    def of(cls, csr: Json) -> Requester:
        spec = csr.get("spec") or {}
        extra = spec.get("extra") or {}
        return cls(
            username=str(spec.get("username") or ""),
            pod_name=_single(extra.get(POD_NAME_EXTRA)),
            pod_uid=_single(extra.get(POD_UID_EXTRA)),
            node_name=_single(extra.get(NODE_NAME_EXTRA)),
        )


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def conditions(csr: Json) -> set[str]:
    return {
        str(c.get("type"))
        for c in (csr.get("status") or {}).get("conditions") or []
        if c.get("status", "True") == "True"
    }


def is_pending(csr: Json) -> bool:
    return not conditions(csr) & {"Approved", "Denied", "Failed"}


def needs_certificate(csr: Json) -> bool:
    """Approved (by us, perhaps just before a crash) and not yet signed."""
    state = conditions(csr)
    return "Approved" in state and not state & {"Denied", "Failed"} and not (
        (csr.get("status") or {}).get("certificate")
    )


def review(
    csr: Json,
    pod: Json | None,
    node_exists: bool,
    *,
    agent_account: tuple[str, str],
    max_lifetime_s: float,
) -> Approve | Deny:
    """Sign or refuse ``csr``. ``pod`` is the pod its requester's token was bound to (None
    when it does not exist), ``agent_account`` the agents' ServiceAccount (namespace, name)."""
    spec = csr.get("spec") or {}
    if spec.get("signerName") != SIGNER_NAME:
        return Deny("WrongSigner", f"signerName must be {SIGNER_NAME}")
    requester = Requester.of(csr)
    expected_user = service_account_user(*agent_account)
    if requester.username != expected_user:
        return Deny("NotAnAgent", f"requested by {requester.username!r}, not {expected_user}")
    if requester.pod_name is None or requester.pod_uid is None:
        return Deny("NoPodBinding", "the requester's token is not bound to a pod")
    parsed = _parse_request(spec.get("request"))
    if isinstance(parsed, Deny):
        return parsed
    node, public_key = parsed
    bad_usages = set(spec.get("usages") or ()) - ALLOWED_USAGES
    if bad_usages or "client auth" not in (spec.get("usages") or ()):
        return Deny("BadUsages", f"usages must be client auth (+ digital signature), got "
                    f"{sorted(spec.get('usages') or ())}")
    pod_node = _pod_node(pod, requester, agent_account)
    if isinstance(pod_node, Deny):
        return pod_node
    if node != pod_node or (requester.node_name is not None and requester.node_name != node):
        return Deny("NodeMismatch", f"the requesting pod runs on {pod_node!r}, the request "
                    f"asks for CN {node!r}")
    if not node_exists:
        return Deny("NodeGone", f"node {node!r} does not exist")
    return Approve(node, public_key, _lifetime(spec.get("expirationSeconds"), max_lifetime_s))


def _parse_request(raw: Any) -> tuple[str, ec.EllipticCurvePublicKey] | Deny:
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(str(raw or ""), validate=True))
    except (ValueError, binascii.Error):
        return Deny("BadRequest", "spec.request is not a PEM certificate request")
    if not request.is_signature_valid:
        return Deny("BadRequest", "the request's signature does not verify")
    cn = common_name(request.subject)
    if cn is None or len(request.subject) != 1:
        return Deny("BadSubject", "the subject must be exactly one CN, the node name")
    if cn == COORDINATOR_CN or not valid_name(cn):
        return Deny("BadSubject", f"CN {cn!r} is reserved or not a valid node name")
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVES):
        return Deny("BadKey", "the key must be ECDSA P-256 or P-384")
    return cn, key


def _pod_node(pod: Json | None, requester: Requester,
              agent_account: tuple[str, str]) -> str | Deny:
    if pod is None:
        return Deny("PodGone", f"the requesting pod {requester.pod_name!r} does not exist")
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if meta.get("uid") != requester.pod_uid:
        return Deny("PodGone", f"pod {requester.pod_name!r} was replaced since the request")
    if meta.get("deletionTimestamp"):
        return Deny("PodGone", f"pod {requester.pod_name!r} is terminating")
    if spec.get("serviceAccountName") != agent_account[1]:
        return Deny("NotAnAgent", f"pod {requester.pod_name!r} does not run as the agent")
    node = spec.get("nodeName")
    if not node:
        return Deny("PodNotScheduled", f"pod {requester.pod_name!r} runs on no node yet")
    return str(node)


def _lifetime(requested: Any, max_lifetime_s: float) -> float:
    if isinstance(requested, int) and requested >= 600:
        return float(min(requested, max_lifetime_s))
    return max_lifetime_s


def _single(values: Sequence[str] | None) -> str | None:
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return None
