from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.brokers import Mosquitto, running_mosquitto
from tests.postgres_server import PostgresServer, running_postgres

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole session (started on first use, about a second)."""
    try:
        server_cm = running_postgres()
        server = server_cm.__enter__()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each engine: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'gpuwarden.db'}"
    return str(request.getfixturevalue("postgres_url"))
