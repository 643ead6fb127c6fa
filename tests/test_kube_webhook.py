"""Self-managed webhook TLS: the coordinator writes its CA into the shipped
MutatingWebhookConfiguration's caBundle, against the fake API server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient

from coordinator.backends.kubernetes.webhook import patch_ca_bundle
from coordinator.pki import CertificateAuthority
from tests.fakekube import FakeKube

SHIPPED = (
    Path(__file__).resolve().parent.parent / "deploy/kubernetes/base/coordinator/webhook.yaml"
)


def shipped() -> dict[str, Any]:
    configuration: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
    return configuration


async def test_the_ca_goes_into_every_webhooks_ca_bundle(
    fake_kube: FakeKube, kube_api_client: ApiClient
) -> None:
    fake_kube.add_webhook_configuration(shipped())
    ca = CertificateAuthority.create()
    assert await patch_ca_bundle(kube_api_client, "gpuwarden", ca.pem) is True
    webhooks = fake_kube.webhook_configuration("gpuwarden")["webhooks"]
    assert [base64.b64decode(w["clientConfig"]["caBundle"]) for w in webhooks] == [ca.pem]
    # the rest of the configuration is as shipped
    assert webhooks[0]["failurePolicy"] == shipped()["webhooks"][0]["failurePolicy"]


async def test_an_unchanged_ca_bundle_is_not_written_again(
    fake_kube: FakeKube, kube_api_client: ApiClient
) -> None:
    fake_kube.add_webhook_configuration(shipped())
    ca = CertificateAuthority.create()
    await patch_ca_bundle(kube_api_client, "gpuwarden", ca.pem)
    fake_kube.clear_requests()
    assert await patch_ca_bundle(kube_api_client, "gpuwarden", ca.pem) is False
    assert fake_kube.writes() == []
