"""SIGTERM ends the run as KILLED: the guard turns the signal into ``SystemExit(128 + 15)``
after calling the program's own handler (e.g. a checkpoint-on-preemption handler).

    guard = SigtermGuard(); guard.install()
    ...                     # SIGTERM -> previous handler, then SystemExit(143); guard.terminated
    guard.restore()
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["SigtermGuard"]


class SigtermGuard:
    """Installs a SIGTERM handler for the life of a run (main thread only) and restores the
    previous one afterwards."""

    def __init__(self) -> None:
        self.terminated = False
        self._previous: Any = None

    def install(self) -> None:
        self.terminated = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            self._previous = None

    def restore(self) -> None:
        if self._previous is None:
            return
        try:
            signal.signal(signal.SIGTERM, self._previous)
        except (ValueError, OSError):
            pass
        self._previous = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if previous is signal.SIG_IGN:
            return  # the program chose to ignore SIGTERM; so do we
        if callable(previous):
            previous(signum, frame)
        self.terminated = True
        raise SystemExit(128 + signum)
