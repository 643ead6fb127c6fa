"""Sharing GPUs among teams: guarantees when capacity falls short, and who borrows idle GPUs
next under fair-share."""

from __future__ import annotations

from collections.abc import Sequence


def scaled_guarantees(quotas: Sequence[int], healthy: int) -> list[int]:
    """Each team's guaranteed GPUs out of ``healthy`` capacity.

    When healthy capacity covers the sum of quotas, a guarantee is the quota. When it does
    not (nodes down or pending recovery), every guarantee shrinks in proportion to its quota
    so the guarantees add up to exactly the healthy capacity: floor(quota x healthy / total),
    then the GPUs left by rounding go one each to the largest remainders (ties: the team
    listed first in the policy). No team is favoured by a fault elsewhere.
    """
    total = sum(quotas)
    healthy = max(0, healthy)
    if total <= healthy:
        return list(quotas)
    shares = [quota * healthy // total for quota in quotas]
    remainders = [quota * healthy % total for quota in quotas]
    left = healthy - sum(shares)
    by_remainder = sorted(range(len(quotas)), key=lambda index: (-remainders[index], index))
    for index in by_remainder[:left]:
        shares[index] += 1
    return shares


def fair_share_key(borrowed: int, weight: int, team_index: int) -> tuple[int, float, int]:
    """Sort key of the team that borrows next under fair-share: the one holding the least
    borrowed GPUs per unit of weight. Teams of weight 0 borrow only what weighted teams
    leave (HyperPod's default weight is 0), among themselves by least borrowed."""
    if weight <= 0:
        return (1, float(borrowed), team_index)
    return (0, borrowed / weight, team_index)
