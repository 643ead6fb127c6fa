"""Lease-based leader election against the fake API server.

Leases here are 2 s (the Lease field is whole seconds) with a 0.2 s retry period, so a
takeover takes about two seconds; the bounds below are generous deadlines, not speed checks.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes.client import ApiClient

from coordinator.backends.kubernetes.client import (
    KubeConfigError,
    api_client_for_url,
    close_api_client,
)
from coordinator.backends.kubernetes.leader import LeaderElector, LeaseSettings, leader_identity
from tests.fakekube import FakeKube

SHORT = LeaseSettings(
    name="coordinator",
    namespace="gpuwarden",
    lease_duration_s=2.0,
    renew_deadline_s=1.0,
    retry_period_s=0.2,
    request_timeout_s=0.5,
)
GENEROUS_S = 10.0


class Candidates:
    """Electors with their own clients and tasks, all stopped after the test."""

    def __init__(self, fake_kube: FakeKube) -> None:
        self.fake = fake_kube
        self.log: list[str] = []
        self.clients: list[ApiClient] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, settings: LeaseSettings = SHORT) -> LeaderElector:
        client = api_client_for_url(self.fake.url)
        self.clients.append(client)
        elector = LeaderElector(
            client,
            leader_identity(name),
            settings,
            on_gained=self._note(f"{name} gained"),
            on_lost=self._note(f"{name} lost"),
        )
        self.tasks.append(asyncio.create_task(elector.run(), name=f"elector-{name}"))
        return elector

    def _note(self, what: str) -> Callable[[], None]:
        return lambda: self.log.append(what)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients:
            close_api_client(client)


@pytest.fixture
async def candidates(fake_kube: FakeKube) -> AsyncIterator[Candidates]:
    group = Candidates(fake_kube)
    yield group
    await group.close()


async def until(condition: Callable[[], bool], timeout_s: float = GENEROUS_S) -> None:
    async def poll() -> None:
        # Leadership is the electors' own state, changed by their tasks: polled, not awaited.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_one_of_two_electors_leads(fake_kube: FakeKube, candidates: Candidates) -> None:
    a = candidates.start("a")
    b = candidates.start("b")

    await until(lambda: a.is_leader or b.is_leader)
    await asyncio.sleep(5 * SHORT.retry_period_s)  # several rounds of renewing and trying

    assert [a.is_leader, b.is_leader].count(True) == 1
    leader = a if a.is_leader else b
    lease = fake_kube.lease("gpuwarden", "coordinator")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == leader.identity


async def test_the_standby_takes_over_after_the_leader_stops_renewing(
    fake_kube: FakeKube, candidates: Candidates
) -> None:
    a = candidates.start("a")
    await until(lambda: a.is_leader)
    b = candidates.start("b")
    await asyncio.sleep(2 * SHORT.retry_period_s)
    assert not b.is_leader

    candidates.tasks[0].cancel()  # a dies without releasing

    await until(lambda: b.is_leader)
    lease = fake_kube.lease("gpuwarden", "coordinator")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == b.identity
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_clean_release_hands_over_at_once(
    fake_kube: FakeKube, candidates: Candidates
) -> None:
    # A lease far longer than the wait below: only the release can explain the takeover.
    long = LeaseSettings(
        name="coordinator",
        namespace="gpuwarden",
        lease_duration_s=60.0,
        renew_deadline_s=40.0,
        retry_period_s=0.2,
        request_timeout_s=0.5,
    )
    a = candidates.start("a", long)
    await until(lambda: a.is_leader)
    b = candidates.start("b", long)

    await a.stop()

    await until(lambda: b.is_leader, timeout_s=5.0)
    assert candidates.log == ["a gained", "a lost", "b gained"]


async def test_a_leader_cut_off_from_the_api_steps_down_before_the_standby_takes_over(
    fake_kube: FakeKube, candidates: Candidates
) -> None:
    a = candidates.start("a")
    await until(lambda: a.is_leader)
    b = candidates.start("b")
    await asyncio.sleep(2 * SHORT.retry_period_s)

    candidates.clients[0].configuration.host = closed_port_url()  # a's network is gone

    await until(lambda: b.is_leader)
    assert not a.is_leader
    assert candidates.log == ["a gained", "a lost", "b gained"]


async def test_a_leader_whose_lease_was_taken_steps_down(
    fake_kube: FakeKube, candidates: Candidates
) -> None:
    a = candidates.start("a")
    await until(lambda: a.is_leader)

    def someone_else_holds_it() -> None:
        fake_kube.modify_lease(
            "gpuwarden",
            "coordinator",
            lambda lease: lease["spec"].update(holderIdentity="intruder"),
        )

    someone_else_holds_it()

    await until(lambda: not a.is_leader)
    assert candidates.log == ["a gained", "a lost"]


async def test_the_leading_event_is_set_while_leading(candidates: Candidates) -> None:
    a = candidates.start("a")

    await asyncio.wait_for(a.leading.wait(), GENEROUS_S)
    await a.stop()

    assert not a.leading.is_set()


def test_a_renew_deadline_not_shorter_than_the_lease_is_refused() -> None:
    with pytest.raises(ValueError, match="renew_deadline_s"):
        LeaseSettings(lease_duration_s=10.0, renew_deadline_s=10.0)


def test_identities_of_the_same_pod_differ() -> None:
    assert leader_identity("coordinator-0") != leader_identity("coordinator-0")
    assert leader_identity("coordinator-0").startswith("coordinator-0-")


def test_the_default_lease_lets_a_standby_take_over_within_15_seconds_of_a_death() -> None:
    # worst case: the leader dies right after renewing; the standby saw that renewal up to one
    # jittered retry period (x1.2) late, waits the lease out, and tries one retry later
    settings = LeaseSettings()
    assert settings.lease_duration_s + 2 * 1.2 * settings.retry_period_s <= 15.0


async def test_a_missing_lease_namespace_stops_the_elector_saying_what_to_create(
    fake_kube: FakeKube, kube_api_client: ApiClient
) -> None:
    fake_kube.remove_namespace("gpuwarden")
    elector = LeaderElector(kube_api_client, leader_identity("solo"), SHORT)
    with pytest.raises(
        KubeConfigError,
        match=r'namespace "gpuwarden".*kubectl create namespace gpuwarden.*--lease-namespace',
    ):
        await asyncio.wait_for(elector.run(), GENEROUS_S)
    assert not elector.is_leader
