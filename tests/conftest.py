from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.brokers import Mosquitto, running_mosquitto

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from tests.fakekube import FakeKube


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free loopback port, anonymous access, stopped after the test."""
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


# The Kubernetes fixtures import on first use: the fake server and the official client take
# about a second to import, which runs that never touch Kubernetes should not pay.


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """The fake Kubernetes API server, empty, on a free loopback port, stopped after the test."""
    from tests.fakekube import running_fake_kube  # noqa: PLC0415 - see above

    with running_fake_kube() as server:
        yield server


@pytest.fixture
def kube_api_client(fake_kube: FakeKube) -> Iterator[ApiClient]:
    """The official client's ApiClient, built as the coordinator builds it, for ``fake_kube``."""
    from coordinator.backends.kubernetes.client import api_client_for_url, close_api_client  # noqa: PLC0415

    client = api_client_for_url(fake_kube.url)
    yield client
    close_api_client(client)
