"""Room on nodes for a preemptor's pods, as victims are tried: the bound that rules nodes out."""

from __future__ import annotations

from coordinator.governance.placement import FreeGpus
from coordinator.governance.room import PodShape, Room


def whole_node_room(free: dict[str, int], could_free_on: dict[str, int]) -> Room:
    room = Room(FreeGpus(free), dict.fromkeys(could_free_on, 8), PodShape.of((8,)))
    room.rule_out(could_free_on)
    return room


def test_a_node_whose_candidates_free_less_than_the_pod_never_helps() -> None:
    room = whole_node_room({}, {"n1": 7})
    assert not room.may_help({"n1": 1})


def test_candidates_already_tried_on_a_node_are_not_counted_twice() -> None:
    """Seven borrowed GPUs and one that cannot be taken: no 8-GPU pod fits there however
    many of the seven are tried."""
    room = whole_node_room({}, {"n1": 7})
    for _ in range(3):
        room.add({"n1": 1})
    assert not room.may_help({"n1": 1})


def test_a_node_whose_candidates_and_free_gpus_make_a_pod_may_help() -> None:
    room = whole_node_room({"n1": 1}, {"n1": 7})
    room.add({"n1": 1})
    assert room.may_help({"n1": 1})


def test_the_preemptors_victims_in_flight_count_on_top_of_the_candidates() -> None:
    room = whole_node_room({}, {"n1": 6})
    room.add_in_flight({"n1": 2})
    assert room.may_help({"n1": 1})
