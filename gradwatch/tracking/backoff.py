"""The tracking pipeline's one retry delay: starts small, doubles, capped.

backoff = Backoff(initial=0.5, maximum=5.0)
delay = backoff.next()      # 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, ...
backoff.reset()             # after a success
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Doubling retry delay from ``initial`` up to ``maximum`` seconds."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._delay = 0.0

    def next(self) -> float:
        """The delay to wait before the next attempt (doubles each call)."""
        self._delay = min(max(self._delay * 2, self.initial), self.maximum)
        return self._delay

    def reset(self) -> None:
        self._delay = 0.0
