"""The broker's shipped configuration (deploy/kubernetes/base/mosquitto/: mosquitto.conf and
the ACL) on a real Mosquitto with mutual TLS: what each certificate's CN may write and read,
certificates from the gpuwarden signing flow included, and an expired one refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from coordinator.pki import CertificateAuthority
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.certs import key_pem, new_key, pem_of
from gpuwarden_common.wire import Kind, cluster_health_topic, node_topic
from tests.brokers import free_port, mosquitto_binary
from tests.fakekube import FakeKube
from tests.node_identity_harness import agent_identity, agent_pod, running_signer

MOSQUITTO = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "base" / "mosquitto"


def _broker_conf() -> str:
    return (MOSQUITTO / "mosquitto.conf").read_text()


def ack_topic(node: str, cluster: str = "default") -> str:
    """The coordinator's acknowledgements to one agent (written by the coordinator only)."""
    return f"gpuwarden/v1/{cluster}/nodes/{node}/ack"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(ca_dir: Path, name: str, cn: str, extensions: str) -> tuple[Path, Path]:
    ext = ca_dir / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n" + extensions
    )
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=ca_dir,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        f"{name}.crt",
        "-extfile",
        ext.name,
        cwd=ca_dir,
    )
    return ca_dir / f"{name}.crt", ca_dir / f"{name}.key"


CLIENTS = ("node-a", "node-b", "gpuwarden-coordinator")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the broker's server certificate (the names the Service gives it, plus localhost
    for the test) and one client certificate per CN in CLIENTS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing: apt-get install -y openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=gpuwarden test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    _issue(
        d,
        "tls",
        "gpuwarden-mqtt",
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:gpuwarden-mqtt,DNS:localhost\n",
    )
    for cn in CLIENTS:
        _issue(d, cn, cn, "extendedKeyUsage=clientAuth\n")
    return d


@contextlib.contextmanager
def deployed_broker(pki: Path, workdir: Path) -> Iterator[int]:
    """Mosquitto running the deployment's own mosquitto.conf and acl, with the pod's paths
    moved into ``workdir`` and the listener onto a free loopback port."""
    port = free_port()
    (workdir / "data").mkdir()
    (workdir / "acl").write_text((MOSQUITTO / "acl").read_text())
    conf = _broker_conf()
    for old, new in (
        ("listener 8883\n", f"listener {port} 127.0.0.1\n"),
        ("/mosquitto/config/acl", str(workdir / "acl")),
        ("/mosquitto/tls/", f"{pki}/"),
        ("/mosquitto/data/", f"{workdir}/data/"),
        ("log_dest stdout", f"log_dest file {workdir}/mosquitto.log"),
    ):
        assert old in conf, f"mosquitto.conf no longer has {old!r}: update this test"
        conf = conf.replace(old, new)
    # Started as root, mosquitto would switch to the user "mosquitto", who cannot read the
    # test's private directory; the pod runs it as a non-root user, which never switches.
    conf = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n{conf}"
    (workdir / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (workdir / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not open its port"
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def broker_port(pki: Path, tmp_path: Path) -> Iterator[int]:
    with deployed_broker(pki, tmp_path) as port:
        yield port


def client_settings(pki: Path, port: int, cn: str | None) -> BrokerSettings:
    """What a daemon builds from its --tls-* flags; no certificate when ``cn`` is None."""
    return BrokerSettings.from_url(
        f"mqtts://localhost:{port}",
        tls_ca=str(pki / "ca.crt"),
        tls_cert=None if cn is None else str(pki / f"{cn}.crt"),
        tls_key=None if cn is None else str(pki / f"{cn}.key"),
    )


@contextlib.asynccontextmanager
async def connected(pki: Path, port: int, cn: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(**client_settings(pki, port, cn).client_kwargs(), timeout=10) as c:
        yield c


async def received_until(client: aiomqtt.Client, marker: str) -> list[str]:
    """Topics the client receives up to and including ``marker``."""
    topics: list[str] = []

    async def collect() -> list[str]:
        async for message in client.messages:
            topics.append(message.topic.value)
            if message.topic.value == marker:
                return topics
        return topics

    return await asyncio.wait_for(collect(), 10)


@pytest.mark.broker
async def test_a_node_writes_its_own_topics_and_nothing_else(pki: Path, broker_port: int) -> None:
    cluster = "default"
    own_state = node_topic(cluster, "node-a", Kind.STATE)
    own_events = node_topic(cluster, "node-a", Kind.EVENTS)
    forbidden = [
        node_topic(cluster, "node-b", Kind.STATE),  # another node's topic
        node_topic(cluster, "node-a", Kind.VERDICT),  # the coordinator's word on it
        cluster_health_topic(cluster),
    ]
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        connected(pki, broker_port, "node-a") as node,
    ):
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await node.publish(own_state, b"{}", qos=1)
        for topic in forbidden:
            await node.publish(topic, b"{}", qos=1)
        # one connection's messages arrive in order: the forbidden ones would precede this
        await node.publish(own_events, b"{}", qos=1)
        topics = await received_until(coordinator, own_events)
    assert topics == [own_state, own_events]


@pytest.mark.broker
async def test_a_node_reads_nothing_not_even_its_own_verdict(pki: Path, broker_port: int) -> None:
    verdict = node_topic("default", "node-a", Kind.VERDICT)
    other_state = node_topic("default", "node-b", Kind.STATE)
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        connected(pki, broker_port, "node-a") as node_a,
        connected(pki, broker_port, "node-b") as node_b,
    ):
        await node_a.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.publish(verdict, b"{}", qos=1)
        await node_b.publish(other_state, b"{}", qos=1)
        await received_until(coordinator, other_state)
        # a round trip after both were routed: anything sent to node-a is queued before it
        await node_a.publish(node_topic("default", "node-a", Kind.STATUS), b"{}", qos=1)
        assert len(node_a.messages) == 0


@pytest.mark.broker
async def test_the_coordinator_reads_all_and_writes_verdicts_and_cluster_health(
    pki: Path, broker_port: int
) -> None:
    verdict = node_topic("default", "node-a", Kind.VERDICT)
    health = cluster_health_topic("default")
    async with connected(pki, broker_port, "gpuwarden-coordinator") as coordinator:
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.publish(verdict, b"{}", qos=1)
        await coordinator.publish(health, b"{}", qos=1)
        assert await received_until(coordinator, health) == [verdict, health]


@pytest.mark.broker
def test_a_client_without_a_certificate_is_refused(pki: Path, broker_port: int) -> None:
    # Raw TLS with the daemons' own context: paho reports this refusal only as a connect
    # timeout, which would not tell a refusal from a slow broker.
    context = client_settings(pki, broker_port, None).ssl_context()
    assert context is not None
    with (
        socket.create_connection(("127.0.0.1", broker_port), 5) as raw,
        pytest.raises(ssl.SSLError, match=r"(?i)certificate|handshake"),
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)  # TLS 1.3 delivers the broker's refusal after the handshake


@pytest.mark.broker
async def test_a_node_reads_its_own_acknowledgements_and_no_others(
    pki: Path, broker_port: int
) -> None:
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        connected(pki, broker_port, "node-a") as node_a,
    ):
        await node_a.subscribe("gpuwarden/v1/+/nodes/+/ack", qos=1)
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.publish(ack_topic("node-b"), b"{}", qos=1)
        await coordinator.publish(ack_topic("node-a"), b"{}", qos=1)
        await node_a.publish(node_topic("default", "node-a", Kind.STATE), b"{}", qos=1)
        assert await received_until(node_a, ack_topic("node-a")) == [ack_topic("node-a")]


@pytest.mark.broker
async def test_a_node_cannot_acknowledge_for_the_coordinator(pki: Path, broker_port: int) -> None:
    own_state = node_topic("default", "node-a", Kind.STATE)
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        connected(pki, broker_port, "node-a") as node,
    ):
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await node.publish(ack_topic("node-a"), b"{}", qos=1)
        await node.publish(own_state, b"{}", qos=1)
        assert await received_until(coordinator, own_state) == [own_state]


@pytest.mark.broker
async def test_a_certificate_from_the_signing_flow_speaks_only_for_its_own_node(
    pki: Path, broker_port: int, fake_kube: FakeKube, tmp_path: Path
) -> None:
    # nothing per node: the agent pod on node-a asks, the gpuwarden signer (the test CA)
    # signs, and the broker's ACL takes the name from the certificate
    ca = CertificateAuthority.from_files(pki / "ca.crt", pki / "ca.key")
    fake_kube.add_node("node-a")
    token = agent_pod(fake_kube, "node-a")
    async with running_signer(fake_kube, ca), agent_identity(
        fake_kube, tmp_path, "node-a", token
    ) as identity:
        await asyncio.wait_for(identity.ensure(), 30)
    files = identity.files
    settings = BrokerSettings.from_url(
        f"mqtts://localhost:{broker_port}", tls_ca=str(files.ca),
        tls_cert=str(files.node_pem), tls_key=str(files.node_pem),
    )
    own, other = (node_topic("default", n, Kind.STATE) for n in ("node-a", "node-b"))
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        aiomqtt.Client(**settings.client_kwargs(), timeout=10) as agent,
    ):
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await agent.publish(other, b"{}", qos=1)
        await agent.publish(own, b"{}", qos=1)
        assert await received_until(coordinator, own) == [own]


@pytest.mark.broker
def test_an_expired_certificate_is_refused(pki: Path, broker_port: int, tmp_path: Path) -> None:
    # what a removed node is left with once its last certificate runs out
    ca = CertificateAuthority.from_files(pki / "ca.crt", pki / "ca.key")
    key = new_key()
    expired = ca.issue_client(key.public_key(), "node-a", lifetime_s=600,
                              now=time.time() - 3600)
    (tmp_path / "expired.pem").write_bytes(key_pem(key) + pem_of(expired))
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(tmp_path / "expired.pem")
    with (
        socket.create_connection(("127.0.0.1", broker_port), 5) as raw,
        pytest.raises(ssl.SSLError, match=r"(?i)certificate|expired|handshake"),
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)


@pytest.mark.broker
@pytest.mark.slow
async def test_a_new_node_joins_with_nothing_provisioned_and_publishes_within_a_minute(
    pki: Path, broker_port: int, fake_kube: FakeKube, tmp_path: Path
) -> None:
    # The whole path on the shipped broker configuration: a real agent process asks the fake
    # API server for its certificate, the real coordinator signs it with the CA it was given
    # (and issues itself its own broker certificate), and the agent's reports arrive.
    from tests.agent_process import agent_process  # noqa: PLC0415
    from tests.coordinator_harness import (  # noqa: PLC0415
        coordinator_settings,
        eventually,
        running_coordinator,
    )
    from tests.node_identity_harness import token_kubeconfig  # noqa: PLC0415

    fake_kube.add_node("gpu-new")
    token = agent_pod(fake_kube, "gpu-new")
    broker_url = f"mqtts://localhost:{broker_port}"
    settings = coordinator_settings(
        tmp_path, broker_url=broker_url, kube=fake_kube,
        flags=["--ca-cert", str(pki / "ca.crt"), "--ca-key", str(pki / "ca.key"),
               "--tls-ca", str(pki / "ca.crt"),
               "--agent-service-account", "gpuwarden/gpuwarden-agent"],
    )  # fmt: skip
    kubeconfig = token_kubeconfig(tmp_path / "agent-kubeconfig", fake_kube.url, token)
    node_pem = tmp_path / "agent-tls" / "node.pem"
    started = time.monotonic()
    async with running_coordinator(settings) as coordinator:
        with agent_process(
            broker_url, "gpu-new", "--tls-bootstrap", f"kubeconfig:{kubeconfig}",
            "--tls-cert", str(node_pem), "--tls-ca", str(node_pem.parent / "ca.crt"),
            tmp=tmp_path,
        ):  # fmt: skip
            lifecycle = await eventually(
                lambda: coordinator.api.lifecycle("gpu-new"),
                lambda state: state == "healthy",
                what="the new node reporting healthy",
                within=60,
            )
    assert lifecycle == "healthy"
    assert time.monotonic() - started < 60
    assert [c["status"]["conditions"][0]["type"] for c in fake_kube.csrs()] == ["Approved"]
