"""Small pure helpers of the MQTT intake (:mod:`coordinator.ingest`): how many log lines a
reason may still write, and how many messages a second arrive. Tested on their own."""

from __future__ import annotations

from collections import deque


class LogLimiter:
    """At most ``per_window`` log lines per key per window; counts what it held back."""

    def __init__(self, per_window: int, window_s: float = 60.0) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._windows: dict[str, tuple[float, int, int]] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(log this one?, how many were suppressed since the last line logged for key)."""
        start, logged, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self._window_s:
            start, logged = now, 0
        if logged < self._per_window:
            self._windows[key] = (start, logged + 1, 0)
            return True, suppressed
        self._windows[key] = (start, logged, suppressed + 1)
        return False, suppressed + 1


class RateMeter:
    """Events per second over the last ``window_s`` seconds, in one-second buckets."""

    def __init__(self, window_s: int = 10) -> None:
        self._window_s = window_s
        self._buckets: deque[tuple[int, int]] = deque()  # (second, count)

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + n)
        else:
            self._buckets.append((second, n))
            self._trim(second)

    def rate(self, now: float) -> float:
        self._trim(int(now))
        return sum(count for _, count in self._buckets) / self._window_s

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            self._buckets.popleft()
