"""The gpuwarden signer on Kubernetes: approves and signs agents' CertificateSigningRequests.

While this replica leads, every ``poll_s`` it lists the CSRs for :data:`SIGNER_NAME`, reads
the pod each pending one was requested from and its node, lets :func:`csr_review.review`
decide, then approves (the ``approval`` subresource) and signs (``status.certificate``: the leaf,
then the CA, so agents learn the CA from the same trusted answer) or denies with a reason.
A request approved but not signed (a crash in between) is signed on the next round. Polling a
list filtered by signer costs one request every few seconds and needs no watch bookkeeping;
a new node's agent is signed within one period.

Issued and denied CSRs are left to kube-controller-manager's cleaner (it deletes them after an
hour), as kubelet's are.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge

from coordinator.backends.kubernetes.client import KubeApi as _Api
from coordinator.backends.kubernetes.client import KubeUnavailableError, RetryPolicy, describe
from coordinator.backends.kubernetes.client import json_body as _json_body
from coordinator.csr_review import Approve, Deny, Requester, is_pending, needs_certificate, review
from coordinator.pki import CertificateAuthority
from gpuwarden_common.certs import SIGNER_NAME, pem_of

log = structlog.get_logger("coordinator.csr")

# What the signer does besides API_CALLS_USED: RBAC's signers resource (named, for approve
# and sign), which the API server checks when the approval and the certificate are written.
SIGNER_RBAC: Final = frozenset({("approve", "signers"), ("sign", "signers")})
_FIELD_SELECTOR: Final = f"spec.signerName={SIGNER_NAME}"


@dataclass(frozen=True)
class SignerSettings:
    agent_account: tuple[str, str]  # (namespace, name) of the agents' ServiceAccount
    max_lifetime_s: float = 24 * 3600.0
    poll_s: float = 2.0
    actor: str = "gpuwarden-coordinator"


class NodeCertificateSigner:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        ca: CertificateAuthority,
        settings: SignerSettings,
        *,
        leading: Callable[[], bool] = lambda: True,
        registry: CollectorRegistry | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._retry = retry or RetryPolicy(deadline_s=10.0)
        self._api = _Api(api_client, self._retry, None, None)
        self._certificates = k8s.CertificatesV1Api(api_client)
        self._ca = ca
        self._settings = settings
        self._leading = leading
        self.outcomes = Counter(
            "gpuwarden_node_certificates",
            "Agents' certificate requests handled, by outcome (issued, denied, failed)",
            ["outcome"], registry=registry,
        )
        self.ca_expiry = Gauge(
            "gpuwarden_node_ca_expiry_timestamp_seconds",
            "When the CA that signs agents' broker certificates expires (epoch seconds)",
            registry=registry,
        )
        self.ca_expiry.set(ca.validity.not_after)

    async def run(self) -> None:
        while True:
            if self._leading():
                try:
                    await self.sweep()
                except (ApiException, KubeUnavailableError) as exc:
                    log.warning("csr.list_failed", error=describe(exc))
            _honour_cancellation()
            await asyncio.sleep(self._settings.poll_s)

    async def sweep(self) -> list[str]:
        """One round over the signer's CSRs; returns what was done (``issued:NAME``, ...)."""
        done = []
        for csr in await self._list():
            name = csr["metadata"]["name"]
            try:
                if is_pending(csr):
                    done.append(await self._decide(csr))
                elif needs_certificate(csr):
                    done.append(await self._sign(csr, None))
            except (ApiException, KubeUnavailableError) as exc:
                # a conflict means someone (the other replica, before a hand-over) moved it on
                self.outcomes.labels("failed").inc()
                log.warning("csr.failed", csr=name, error=describe(exc))
                done.append(f"failed:{name}")
        return done

    async def _decide(self, csr: dict[str, Any]) -> str:
        requester = Requester.of(csr)
        namespace = self._settings.agent_account[0]
        pod = None if requester.pod_name is None else await self._get_pod(namespace,
                                                                          requester.pod_name)
        node = (pod or {}).get("spec", {}).get("nodeName")
        exists = bool(node) and await self._node_exists(str(node))
        verdict = review(csr, pod, exists, agent_account=self._settings.agent_account,
                         max_lifetime_s=self._settings.max_lifetime_s)
        name = csr["metadata"]["name"]
        if isinstance(verdict, Deny):
            await self._condition(csr, "Denied", verdict.reason, verdict.message)
            self.outcomes.labels("denied").inc()
            log.warning("csr.denied", csr=name, reason=verdict.reason, detail=verdict.message,
                        requester=requester.pod_name)
            return f"denied:{name}"
        approved = await self._condition(
            csr, "Approved", "AgentPodOnNode",
            f"requested by agent pod {requester.pod_name} running on node {verdict.node}",
        )
        return await self._sign(approved, verdict)

    async def _sign(self, csr: dict[str, Any], verdict: Approve | None) -> str:
        name = csr["metadata"]["name"]
        if verdict is None:  # approved earlier: review again before signing
            verdict_or_deny = await self._review_again(csr)
            if isinstance(verdict_or_deny, Deny):
                await self._failed(csr, verdict_or_deny)
                return f"denied:{name}"
            verdict = verdict_or_deny
        leaf = self._ca.issue_client(verdict.public_key, verdict.node, verdict.lifetime_s)
        bundle = pem_of(leaf) + self._ca.pem
        csr.setdefault("status", {})["certificate"] = base64.b64encode(bundle).decode()
        await self._api.retried(
            "update", "certificatesigningrequests/status",
            lambda t: _json_body(self._certificates.replace_certificate_signing_request_status(
                name, csr,  # type: ignore[arg-type]  # a dict body is sent as is
                _preload_content=False, _request_timeout=t)),
            self._deadline(),
        )
        self.outcomes.labels("issued").inc()
        log.info("csr.issued", csr=name, node=verdict.node,
                 expires=leaf.not_valid_after_utc.isoformat())
        return f"issued:{name}"

    async def _review_again(self, csr: dict[str, Any]) -> Approve | Deny:
        requester = Requester.of(csr)
        pod = None if requester.pod_name is None else await self._get_pod(
            self._settings.agent_account[0], requester.pod_name)
        node = (pod or {}).get("spec", {}).get("nodeName")
        exists = bool(node) and await self._node_exists(str(node))
        pending = {**csr, "status": {}}
        return review(pending, pod, exists, agent_account=self._settings.agent_account,
                      max_lifetime_s=self._settings.max_lifetime_s)

    async def _failed(self, csr: dict[str, Any], why: Deny) -> None:
        csr.setdefault("status", {}).setdefault("conditions", []).append(
            _condition("Failed", why.reason, why.message))
        name = csr["metadata"]["name"]
        await self._api.retried(
            "update", "certificatesigningrequests/status",
            lambda t: _json_body(self._certificates.replace_certificate_signing_request_status(
                name, csr,  # type: ignore[arg-type]  # a dict body is sent as is
                _preload_content=False, _request_timeout=t)),
            self._deadline(),
        )
        self.outcomes.labels("denied").inc()

    async def _condition(self, csr: dict[str, Any], kind: str, reason: str,
                         message: str) -> dict[str, Any]:
        csr.setdefault("status", {}).setdefault("conditions", []).append(
            _condition(kind, reason, message))
        name = csr["metadata"]["name"]
        updated: dict[str, Any] = await self._api.retried(
            "update", "certificatesigningrequests/approval",
            lambda t: _json_body(self._certificates.replace_certificate_signing_request_approval(
                name, csr,  # type: ignore[arg-type]  # a dict body is sent as is
                _preload_content=False, _request_timeout=t)),
            self._deadline(),
        )
        return updated

    async def _list(self) -> list[dict[str, Any]]:
        body = await self._api.retried(
            "list", "certificatesigningrequests",
            lambda t: _json_body(self._certificates.list_certificate_signing_request(
                field_selector=_FIELD_SELECTOR, _preload_content=False, _request_timeout=t)),
            self._deadline(),
        )
        return [i for i in body.get("items") or [] if i["spec"].get("signerName") == SIGNER_NAME]

    async def _get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = await self._api.retried(
                "get", "pods",
                lambda t: _json_body(self._api.core.read_namespaced_pod(
                    name, namespace, _preload_content=False, _request_timeout=t)),
                self._deadline(),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return pod

    async def _node_exists(self, name: str) -> bool:
        try:
            await self._api.retried(
                "get", "nodes",
                lambda t: _json_body(self._api.core.read_node(
                    name, _preload_content=False, _request_timeout=t)),
                self._deadline(),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _deadline(self) -> float:
        return time.monotonic() + self._retry.deadline_s


def _honour_cancellation() -> None:
    """On Python 3.11 ``asyncio.wait_for`` (inside every API call) returns the result of a call
    that finished just as the task was cancelled, swallowing the cancellation; the task still
    counts it, so raise it here rather than loop on after shutdown asked us to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _condition(kind: str, reason: str, message: str) -> dict[str, str]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"type": kind, "status": "True", "reason": reason, "message": message[:1024],
            "lastUpdateTime": now, "lastTransitionTime": now}
