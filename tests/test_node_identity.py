"""Agents' broker certificates through the CSR API and the gpuwarden signer, against the fake
API server: nothing provisioned per node, no certificate for another node, renewal, removal."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cryptography import x509

from agent.node_identity import CertificateRefused
from coordinator.pki import CertificateAuthority
from gpuwarden_common.certs import common_name, split_pem_chain
from tests.fakekube import FakeKube
from tests.node_identity_harness import agent_identity, agent_pod, running_signer


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def _leaf(path: Path) -> x509.Certificate:
    return split_pem_chain(path.read_bytes())[0]


def _conditions(fake: FakeKube) -> list[str]:
    return [c["reason"] for csr in fake.csrs() for c in csr["status"].get("conditions", [])]


async def test_a_new_node_gets_a_certificate_for_its_name_with_nothing_provisioned(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("gpu-new")
    token = agent_pod(fake_kube, "gpu-new")
    started = time.monotonic()
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "gpu-new", token
    ) as identity:
        await asyncio.wait_for(identity.ensure(), 30)
    took = time.monotonic() - started
    leaf = _leaf(identity.files.node_pem)
    assert common_name(leaf.subject) == "gpu-new"
    leaf.verify_directly_issued_by(ca.certificate)
    assert identity.files.ca.read_bytes() == ca.pem
    assert _conditions(fake_kube) == ["AgentPodOnNode"]
    assert took < 10  # the issue asks for publishing within a minute


async def test_an_agent_on_node_a_asking_for_node_b_is_denied(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    fake_kube.add_node("node-b")
    token_a = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-b", token_a  # node A's pod, claiming B's name
    ) as impostor:
        with pytest.raises(CertificateRefused, match="NodeMismatch"):
            await asyncio.wait_for(impostor.renew(), 30)
    [csr] = fake_kube.csrs()
    assert "certificate" not in csr["status"]
    assert not impostor.files.node_pem.exists()


async def test_a_pod_of_another_service_account_gets_no_certificate(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a", account="default")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-a", token
    ) as identity:
        with pytest.raises(CertificateRefused, match="NotAnAgent"):
            await asyncio.wait_for(identity.renew(), 30)


async def test_a_removed_node_gets_no_renewal(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-a", token
    ) as identity:
        first = await asyncio.wait_for(identity.renew(), 30)
        fake_kube.remove_node("node-a")
        with pytest.raises(CertificateRefused, match="NodeGone"):
            await asyncio.wait_for(identity.renew(), 30)
    # what it has keeps working until it expires, and no longer: the lifetime bounds access
    assert identity.validity == first


async def test_renewal_brings_a_new_key_and_a_later_expiry(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-a", token, lifetime_s=1200
    ) as identity:
        first = await asyncio.wait_for(identity.renew(), 30)
        first_key = _leaf(identity.files.node_pem).public_key()
        await asyncio.sleep(1.1)
        second = await asyncio.wait_for(identity.renew(), 30)
        second_key = _leaf(identity.files.node_pem).public_key()
    assert second.not_after > first.not_after
    assert second.lifetime_s == pytest.approx(1200 + 60, abs=2)  # backdated a minute
    assert first_key != second_key
    assert identity.expiry._value.get() == second.not_after


async def test_a_kept_certificate_not_yet_due_is_reused_without_a_request(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-a", token
    ) as identity:
        await asyncio.wait_for(identity.ensure(), 30)
        requests = len(fake_kube.csrs())
        await asyncio.wait_for(identity.ensure(), 30)  # as after an agent restart
    assert len(fake_kube.csrs()) == requests == 1


async def test_renewal_is_due_at_70_to_90_percent_of_the_lifetime(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-a", token
    ) as identity:
        validity = await asyncio.wait_for(identity.renew(), 30)
    share = (identity.renew_at - validity.not_before) / validity.lifetime_s
    assert 0.7 <= share <= 0.9
    assert validity.renew_at(0.0) < validity.renew_at(1.0) < validity.not_after


async def test_issued_and_denied_requests_are_counted_for_the_alerts(
    fake_kube: FakeKube, ca: CertificateAuthority, tmp_path: Path
) -> None:
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca) as signer:
        async with agent_identity(fake_kube, tmp_path, "node-a", token) as good:
            await asyncio.wait_for(good.renew(), 30)
        async with agent_identity(fake_kube, tmp_path, "node-b", token) as bad:
            with pytest.raises(CertificateRefused):
                await asyncio.wait_for(bad.renew(), 30)
    assert signer.outcomes.labels("issued")._value.get() == 1
    assert signer.outcomes.labels("denied")._value.get() == 1
    assert signer.ca_expiry._value.get() == ca.validity.not_after
