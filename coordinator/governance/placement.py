"""Best-fit placement of a gang's pods onto nodes' free healthy GPUs.

On Kubernetes the scheduler places pods and the engine decides counts only; the simulated
cluster (and the engine, when it is given capacity per node) uses this to know a gang fits
at all. Each pod goes to the node with the fewest free GPUs that still holds it (ties: the
node whose name sorts first), largest pods first, so whole nodes stay free for big pods.
Nodes are kept in buckets by free count, so a placement costs O(pods x distinct counts).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence


class FreeGpus:
    """Free GPUs per node, updated as placements are made."""

    def __init__(self, free: Mapping[str, int]) -> None:
        self._free: dict[str, int] = {}
        self._buckets: dict[int, list[str]] = {}
        self._total = 0
        # Full nodes are left out before sorting: in a busy cluster they are most of them.
        for node in sorted(node for node, count in free.items() if count > 0):
            count = free[node]
            self._free[node] = count
            self._buckets.setdefault(count, []).append(node)
            self._total += count
        self._counts = sorted(self._buckets)

    @property
    def total(self) -> int:
        return self._total

    def free_on(self, node: str) -> int:
        return self._free.get(node, 0)

    @property
    def by_node(self) -> Mapping[str, int]:
        """The free GPUs per node (nodes with none left out), kept current as placements
        are made: a view for hot loops, whose ``get`` costs no Python call."""
        return self._free

    def by_count_descending(self) -> Iterator[tuple[int, Sequence[str]]]:
        """The nodes with free GPUs, most free first, each count's nodes by name."""
        for count in reversed(self._counts):
            bucket = self._buckets[count]
            if bucket:
                yield count, tuple(bucket)

    def place(self, pod_gpus: Sequence[int]) -> dict[str, int] | None:
        """Place all pods or none: GPUs per node, or None (nothing changes) when the gang
        does not fit."""
        wanted = sorted((gpus for gpus in pod_gpus if gpus > 0), reverse=True)
        if sum(wanted) > self._total:
            return None
        taken: list[tuple[str, int]] = []
        for gpus in wanted:
            node = self._best_fit(gpus)
            if node is None:
                for undo_node, undo_gpus in reversed(taken):
                    self._adjust(undo_node, undo_gpus)
                return None
            self._adjust(node, -gpus)
            taken.append((node, gpus))
        placed: dict[str, int] = {}
        for node, gpus in taken:
            placed[node] = placed.get(node, 0) + gpus
        return placed

    def fits(self, pod_gpus: Sequence[int]) -> bool:
        """Whether :meth:`place` would place the gang now; nothing changes.

        Pods of one size (a single pod, or a gang of equal pods, which is most of them) are
        answered from the buckets alone, see :meth:`slots_for`; mixed sizes are placed and
        put back."""
        wanted = [gpus for gpus in pod_gpus if gpus > 0]
        if not wanted:
            return True
        size = wanted[0]
        if all(gpus == size for gpus in wanted):
            return self.slots_for(size, enough=len(wanted)) >= len(wanted)
        placed = self.place(wanted)
        if placed is None:
            return False
        self.release(placed)
        return True

    def slots_for(self, size: int, enough: int | None = None) -> int:
        """How many pods of ``size`` GPUs the free GPUs hold, counting stopped once past
        ``enough``. Best fit wastes nothing when every pod has the same size, so a gang of
        ``n`` such pods fits exactly when this is at least ``n``."""
        if size <= 0:
            raise ValueError(f"a pod size must be positive, got {size}")
        slots = 0
        for count in reversed(self._counts):
            if count < size:
                break
            slots += len(self._buckets[count]) * (count // size)
            if enough is not None and slots >= enough:
                break
        return slots

    def release(self, nodes: Mapping[str, int]) -> None:
        for node, gpus in nodes.items():
            self._adjust(node, gpus)

    def take(self, nodes: Mapping[str, int]) -> None:
        """The inverse of :meth:`release`: those GPUs are no longer free. All or nothing:
        raises ValueError, changing nothing, if a node has fewer free GPUs than asked."""
        free = self._free
        if any(gpus > free.get(node, 0) for node, gpus in nodes.items()):
            short = sorted(node for node, gpus in nodes.items() if gpus > free.get(node, 0))
            raise ValueError(f"fewer GPUs free than taken on {', '.join(short)}")
        for node, gpus in nodes.items():
            self._adjust(node, -gpus)

    def _best_fit(self, gpus: int) -> str | None:
        counts = self._counts
        for index in range(bisect.bisect_left(counts, gpus), len(counts)):
            bucket = self._buckets[counts[index]]
            if bucket:
                return bucket[0]
        return None

    def _adjust(self, node: str, delta: int) -> None:
        before = self._free.get(node, 0)
        after = before + delta
        if before > 0:
            bucket = self._buckets[before]
            del bucket[bisect.bisect_left(bucket, node)]
        if after > 0:
            self._free[node] = after
            if after not in self._buckets:
                self._buckets[after] = []
                bisect.insort(self._counts, after)
            bisect.insort(self._buckets[after], node)
        else:
            self._free.pop(node, None)
        self._total += delta


def best_fit(pod_gpus: Sequence[int], free: Mapping[str, int]) -> dict[str, int] | None:
    """GPUs per node for the gang's pods on ``free`` GPUs per node, or None if it does not
    fit. Pure: ``free`` is not changed."""
    return FreeGpus(free).place(pod_gpus)
