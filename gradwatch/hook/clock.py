"""The training loop's own time, apart from the hook's: the base of ``budget`` and of the
statistics' share. Pure bookkeeping over timestamps the caller passes, so a test drives it
with a fake clock.

    clock = LoopClock()
    clock.enter(now=10.000); ...; clock.leave(entered=10.000, now=10.001)   # a step() call
    clock.enter(now=10.011)      # the loop ran 10 ms between two step() calls
    clock.loop_seconds, clock.hook_seconds, clock.step_seconds   # 0.010, 0.001, 0.010
"""

from __future__ import annotations

__all__ = ["PAUSE_STEPS", "LoopClock"]

#: A gap between two steps longer than this many typical steps is a pause (evaluation,
#: checkpoint): it counts as this many steps of loop time.
PAUSE_STEPS = 4


class LoopClock:
    """Loop time (between ``step()`` calls) and hook time (inside them), in seconds.

    ``step_seconds`` is an EWMA of the loop's own time per step, with pauses clipped to
    :data:`PAUSE_STEPS` typical steps, so a pause buys no burst of checks.
    """

    __slots__ = ("step_seconds", "loop_seconds", "hook_seconds", "left_at")

    def __init__(self) -> None:
        self.step_seconds = 0.0
        self.loop_seconds = 0.0
        self.hook_seconds = 0.0
        self.left_at: float | None = None  # when step() last returned

    def enter(self, now: float) -> None:
        """``step()`` was entered at ``now``: the time since it last returned was the loop's."""
        left_at = self.left_at
        if left_at is None:
            return
        dt = now - left_at
        typical = self.step_seconds
        if typical > 0.0:
            if dt > PAUSE_STEPS * typical:
                dt = PAUSE_STEPS * typical
            self.step_seconds = 0.9 * typical + 0.1 * dt
        else:
            self.step_seconds = dt
        self.loop_seconds += dt

    def leave(self, entered: float, now: float) -> None:
        """``step()``, entered at ``entered``, returns at ``now``."""
        self.left_at = now
        self.hook_seconds += now - entered

    @property
    def overhead(self) -> float:
        """The hook's time as a fraction of the loop's own (0.0 before the loop ran)."""
        return self.hook_seconds / self.loop_seconds if self.loop_seconds > 0 else 0.0
