"""An agent pod, its bound token and the gpuwarden signer, on the fake API server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agent.kube_csr import KubeCsrClient
from agent.node_identity import IdentityFiles, NodeIdentity
from coordinator.backends.kubernetes.client import api_client_for_url, close_api_client
from coordinator.backends.kubernetes.csr import NodeCertificateSigner, SignerSettings
from coordinator.csr_review import NODE_NAME_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA
from coordinator.pki import CertificateAuthority
from tests.fakekube import FakeKube

NAMESPACE = "gpuwarden"
AGENT_ACCOUNT = (NAMESPACE, "gpuwarden-agent")
_serial = itertools.count()


def agent_pod(fake: FakeKube, node: str, *, account: str = "gpuwarden-agent") -> str:
    """An agent pod scheduled on ``node``, and a token bound to it; returns the token."""
    name = f"gpuwarden-agent-{node}"
    pod = fake.add_pod(NAMESPACE, name, node_name=node)
    fake.modify_pod(NAMESPACE, name, lambda p: p["spec"].update(serviceAccountName=account))
    token = f"token-{name}-{account}"
    fake.add_token(
        token,
        f"system:serviceaccount:{NAMESPACE}:{account}",
        {POD_NAME_EXTRA: [name], POD_UID_EXTRA: [pod["metadata"]["uid"]],
         NODE_NAME_EXTRA: [node]},
    )
    return token


def token_kubeconfig(path: Path, server_url: str, token: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster: {{server: '{server_url}'}}\n"
        f"users:\n- name: agent\n  user: {{token: '{token}'}}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: agent}\n"
        "current-context: fake\n"
    )
    return path


@dataclass
class Agent:
    identity: NodeIdentity
    client: KubeCsrClient


@contextlib.asynccontextmanager
async def agent_identity(
    fake: FakeKube, tmp: Path, node: str, token: str, *, lifetime_s: int = 3600
) -> AsyncIterator[NodeIdentity]:
    directory = tmp / f"agent-{node}-{next(_serial)}"
    directory.mkdir()
    kubeconfig = token_kubeconfig(directory / "kubeconfig", fake.url, token)
    client = KubeCsrClient.from_mode(f"kubeconfig:{kubeconfig}")
    files = IdentityFiles(directory / "node.pem", directory / "ca.crt")
    try:
        yield NodeIdentity(node, files, client, lifetime_s=lifetime_s, poll_s=0.05,
                           request_timeout_s=10.0)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running_signer(
    fake: FakeKube, ca: CertificateAuthority, *, max_lifetime_s: float = 86400.0
) -> AsyncIterator[NodeCertificateSigner]:
    api = api_client_for_url(fake.url)
    signer = NodeCertificateSigner(
        api, ca, SignerSettings(AGENT_ACCOUNT, max_lifetime_s=max_lifetime_s, poll_s=0.05)
    )
    task = asyncio.create_task(signer.run(), name="signer")
    try:
        yield signer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        close_api_client(api)
