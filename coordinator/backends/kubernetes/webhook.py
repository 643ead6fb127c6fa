"""Self-managed TLS for the admission webhook: put the gpuwarden CA into the
MutatingWebhookConfiguration's ``caBundle``, so the API server trusts the serving certificate
each replica issues itself at start. No cert-manager needed; idempotent (both replicas write the
same bytes, and an unchanged bundle is not written at all).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import structlog
from kubernetes import client as k8s

from coordinator.backends.kubernetes.client import KubeApi as _Api
from coordinator.backends.kubernetes.client import RetryPolicy
from coordinator.backends.kubernetes.client import json_body as _json_body

log = structlog.get_logger("coordinator.webhook")

_JSON_PATCH = "application/json-patch+json"


async def patch_ca_bundle(
    api_client: k8s.ApiClient, configuration: str, ca_pem: bytes,
    retry: RetryPolicy | None = None,
) -> bool:
    """Set ``caBundle`` on every webhook of ``configuration``; True when something changed.
    The JSON Patch carries a ``test`` of the list's length, so a concurrent edit fails rather
    than being overwritten."""
    policy = retry or RetryPolicy()
    api = _Api(api_client, policy, None, None)
    admission = k8s.AdmissionregistrationV1Api(api_client)
    deadline = time.monotonic() + policy.deadline_s
    current: dict[str, Any] = await api.retried(
        "get", "mutatingwebhookconfigurations",
        lambda t: _json_body(admission.read_mutating_webhook_configuration(
            configuration, _preload_content=False, _request_timeout=t)),
        deadline,
    )
    bundle = base64.b64encode(ca_pem).decode()
    webhooks = current.get("webhooks") or []
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion",
         "value": current["metadata"]["resourceVersion"]}
    ]
    for index, webhook in enumerate(webhooks):
        if (webhook.get("clientConfig") or {}).get("caBundle") != bundle:
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle",
                        "value": bundle})
    if len(ops) == 1:
        return False
    await api.retried(
        "patch", "mutatingwebhookconfigurations",
        lambda t: _json_body(admission.patch_mutating_webhook_configuration(
            configuration, ops, _content_type=_JSON_PATCH, _preload_content=False,
            _request_timeout=t)),
        deadline,
    )
    log.info("webhook.ca_bundle_set", configuration=configuration, webhooks=len(webhooks))
    return True
