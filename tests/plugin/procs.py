"""Watching a child process from a test through /proc (Linux only; callers skip elsewhere)."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie.

    A process that exits while its stat file is read makes the read fail with ESRCH
    (``ProcessLookupError``), not ``FileNotFoundError``: any ``OSError`` means it is gone.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
