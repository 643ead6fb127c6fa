"""Guarantees when healthy capacity falls short, and the fair-share order of borrowers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.governance import scaled_guarantees
from coordinator.governance.fairshare import fair_share_key


def test_guarantees_are_the_quotas_when_capacity_covers_them() -> None:
    assert scaled_guarantees([16, 8], 40) == [16, 8]


def test_guarantees_shrink_in_proportion_to_the_quotas() -> None:
    assert scaled_guarantees([16, 8], 12) == [8, 4]


def test_rounding_leftovers_go_to_the_largest_remainders() -> None:
    assert scaled_guarantees([10, 10, 10], 10) == [4, 3, 3]


def test_no_healthy_capacity_means_no_guarantee() -> None:
    assert scaled_guarantees([8, 8], 0) == [0, 0]


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=8), st.integers(0, 5000))
def test_scaled_guarantees_never_exceed_quota_and_add_up_to_the_capacity(
    quotas: list[int], healthy: int
) -> None:
    shares = scaled_guarantees(quotas, healthy)
    assert all(0 <= share <= quota for share, quota in zip(shares, quotas, strict=True))
    assert sum(shares) == min(sum(quotas), healthy)


def test_the_team_with_least_borrowed_per_weight_borrows_next() -> None:
    assert fair_share_key(6, 75, 0) > fair_share_key(1, 25, 1)  # 0.08 vs 0.04 per weight


def test_weightless_teams_borrow_after_every_weighted_team() -> None:
    assert fair_share_key(0, 0, 0) > fair_share_key(1000, 1, 1)
