"""A round's victim budget (``preemption.maxVictimsPerRound``): once a round has chosen that
many victims, the next task that would look for more stops it, and it and every task not
yet decided wait for the next round. A preemptor's set is whole or not chosen, so a round
may end a little over the budget. It bounds a round's work, and the checkpoint storm it
starts, whatever the layout; the rounds after go on where it stopped, since its preemptors
are then on their way and need no new victims. Internal to :mod:`.engine`."""

from __future__ import annotations

from coordinator.governance.tasks import Task


class VictimBudgetSpent(Exception):
    """The round has chosen its budget's worth of victims and ``task`` would look for
    more: the round stops there."""

    def __init__(self, task: Task) -> None:
        super().__init__(task.key)
        self.task = task


def stopped_words(stopped: str, chosen: int, budget: int) -> tuple[str, str]:
    """Why the task the round stopped at waits, and why every task it did not decide does."""
    limit = f"preemption.maxVictimsPerRound: {budget}"
    return (
        f"not looked at for preemption in this round: the round has chosen {chosen} "
        f"victims ({limit}); the next round goes on here",
        f"decided in the next round: this round stopped at {stopped}, having chosen "
        f"{chosen} victims ({limit})",
    )
