"""Best-fit placement of a gang's pods onto free GPUs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.governance import FreeGpus, best_fit


def test_a_pod_goes_to_the_node_with_the_fewest_free_gpus_that_holds_it() -> None:
    assert best_fit([2], {"roomy": 8, "snug": 2, "tiny": 1}) == {"snug": 2}


def test_equal_nodes_are_picked_by_name() -> None:
    assert best_fit([4], {"n2": 8, "n1": 8}) == {"n1": 4}


def test_largest_pods_are_placed_first_to_keep_whole_nodes_for_them() -> None:
    assert best_fit([1, 8], {"a": 8, "b": 1}) == {"a": 8, "b": 1}


def test_a_gang_that_does_not_fit_places_nothing() -> None:
    free = FreeGpus({"a": 4, "b": 4})
    assert free.place([4, 4, 4]) is None
    assert (free.free_on("a"), free.free_on("b"), free.total) == (4, 4, 8)


def test_pods_without_gpus_need_no_node() -> None:
    assert best_fit([0, 8], {"a": 8}) == {"a": 8}


def test_several_pods_can_share_a_node() -> None:
    assert best_fit([2, 2, 2], {"a": 8}) == {"a": 6}


def test_released_gpus_can_be_placed_again() -> None:
    free = FreeGpus({"a": 8})
    placed = free.place([8])
    assert placed is not None and free.place([8]) is None
    free.release(placed)
    assert free.place([8]) == {"a": 8}


def test_best_fit_does_not_change_its_input() -> None:
    free = {"a": 8}
    best_fit([8], free)
    assert free == {"a": 8}


@given(
    st.dictionaries(st.sampled_from([f"n{i}" for i in range(6)]), st.integers(0, 8)),
    st.lists(st.integers(0, 8), max_size=8),
)
def test_a_placement_fits_every_node_and_the_whole_gang(
    free: dict[str, int], pods: list[int]
) -> None:
    placed = best_fit(pods, free)
    if placed is not None:
        assert all(0 < gpus <= free[node] for node, gpus in placed.items())
        assert sum(placed.values()) == sum(pods)
