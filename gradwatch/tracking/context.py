"""The run's context tags (who, what source, which commit), without importing MLflow.

    context_tags()  # {"mlflow.user": "ana", "mlflow.source.name": "/abs/train.py",
                    #  "mlflow.source.type": "LOCAL", "mlflow.source.git.commit": "3f2a..."}

The same tags MLflow's default context providers set, resolved here in the training process
(a later ``gradwatch sync`` runs elsewhere) by reading ``.git`` directly: MLflow's own
resolution imports MLflow and GitPython and starts a ``git`` process per run.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

__all__ = ["context_tags", "git_commit"]


def _source_name() -> str:
    main = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return str(Path(main).absolute()) if main and Path(main).is_file() else (main or "<console>")


def _git_dir(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():  # a worktree or submodule: "gitdir: PATH"
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                return (folder / text[len("gitdir:") :].strip()).resolve()
    return None


def _ref_commit(git_dir: Path, ref: str) -> str | None:
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():
        common = (git_dir / commondir.read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text().strip() or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name.strip() == ref:
                return sha
    return None


def git_commit(path: str | os.PathLike) -> str | None:
    """The commit checked out in the repository holding ``path``, or None."""
    try:
        git_dir = _git_dir(Path(path).absolute())
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            return _ref_commit(git_dir, head[4:].strip())
        return head or None
    except (OSError, UnicodeDecodeError):
        return None


def context_tags() -> dict[str, str]:
    """mlflow.user, mlflow.source.name/type and, in a git checkout, mlflow.source.git.commit."""
    source = _source_name()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    tags = {"mlflow.user": user, "mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
    folder = Path(source).parent if Path(source).is_file() else Path.cwd()
    commit = git_commit(folder)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags
