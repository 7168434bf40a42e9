"""The tracking pipeline's one ``flock`` helper (POSIX).

    fd = try_lock(path)                  # exclusive, non-blocking; None if another holds it
    fd = lock_within(path, seconds=5.0)  # retry until the deadline
    held = lock_held(path)               # True while some process holds it exclusively
    release(fd)

The kernel drops a process's locks when it dies, which is how ``sync`` tells a crashed
run (lock free) from a live one (lock held).
"""

from __future__ import annotations

import fcntl
import os
import time

__all__ = ["lock_held", "lock_within", "release", "try_lock"]


def try_lock(path: str | os.PathLike, create: bool = False) -> int | None:
    """An fd holding an exclusive lock on ``path``, or None if another process holds one.

    ``create``: create the file (mode 0600) if missing; otherwise a missing file raises
    FileNotFoundError.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600) if create else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_within(path: str | os.PathLike, seconds: float, create: bool = False) -> int | None:
    """``try_lock`` retried every 50 ms for up to ``seconds``; None if still held."""
    deadline = time.monotonic() + seconds
    while True:
        fd = try_lock(path, create=create)
        if fd is not None or time.monotonic() >= deadline:
            return fd
        time.sleep(0.05)


def lock_held(path: str | os.PathLike) -> bool:
    """True while some process holds an exclusive ``flock`` on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def release(fd: int | None) -> None:
    """Close ``fd`` (which releases its lock); None is ignored."""
    if fd is not None:
        os.close(fd)
