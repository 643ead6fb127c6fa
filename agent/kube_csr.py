"""The agent's one use of the Kubernetes API: its own CertificateSigningRequests.

Only this agent module imports ``kubernetes``. The pod's ServiceAccount token (bound to the
pod, so the API server records the pod's name and uid on the request) is all it needs; RBAC
lets the agents' account create CSRs and read them back, nothing else.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from agent.node_identity import CertificateRefused, Issued
from gpuwarden_common.certs import SIGNER_NAME

REQUEST_TIMEOUT_S = 10.0
USAGES = ["digital signature", "client auth"]


class KubeCsrClient:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api_client = api_client
        self._certificates = k8s.CertificatesV1Api(api_client)

    @classmethod
    def from_mode(cls, mode: str, environ: Mapping[str, str] | None = None) -> KubeCsrClient:
        """``in-cluster`` (the pod's token) or ``kubeconfig:PATH``."""
        configuration = k8s.Configuration()
        if mode == "in-cluster":
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(Path(mode.removeprefix("kubeconfig:")).expanduser()),
                client_configuration=configuration, persist_config=False,
            )
        configuration.retries = False  # NodeIdentity retries, with backoff
        return cls(k8s.ApiClient(configuration))

    async def request(self, node: str, csr_pem: bytes, lifetime_s: int) -> str:
        body = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            # generateName: a fresh object per request, so a renewal never collides
            "metadata": {"generateName": f"gpuwarden-agent-{node[:200]}-",
                         "labels": {"app.kubernetes.io/name": "gpuwarden-agent"}},
            "spec": {
                "request": base64.b64encode(csr_pem).decode(),
                "signerName": SIGNER_NAME,
                "usages": USAGES,
                "expirationSeconds": lifetime_s,
            },
        }
        created = await asyncio.to_thread(
            self._certificates.create_certificate_signing_request,
            body,  # type: ignore[arg-type]  # a dict body is sent as is
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
        )
        return str(_json(created)["metadata"]["name"])

    async def outcome(self, name: str) -> Issued | None:
        try:
            response = await asyncio.to_thread(
                self._certificates.read_certificate_signing_request, name,
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise CertificateRefused(f"{name} was deleted before it was signed") from None
            raise
        status = _json(response).get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") in {"Denied", "Failed"}:
                raise CertificateRefused(
                    f"{name} {condition['type'].lower()}: {condition.get('reason', '')}: "
                    f"{condition.get('message', '')}"
                )
        if status.get("certificate"):
            return Issued(base64.b64decode(status["certificate"]))
        return None

    async def close(self) -> None:
        await asyncio.to_thread(self._api_client.close)


def _json(response: Any) -> dict[str, Any]:
    import json  # noqa: PLC0415

    try:
        body: dict[str, Any] = json.loads(response.data)
        return body
    finally:
        response.release_conn()
