"""A lock file so two QGIS windows never install into the same folder at once.

Created atomically (``O_EXCL``) with the owner's pid and host; a lock whose process is gone (QGIS
crashed or was killed mid-install) is stale and taken over, and so is one written on another computer
(a shared home folder), whose pid cannot be checked from here. Stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

LOCK_NAME = "setup.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists; never signals it (os.kill(pid, 0) kills on Windows)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockBusy(Exception):
    """Another live process holds the lock."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(f"Another QGIS (process {pid}) is already setting up the backend in {path.parent}; "
                         "wait for it to finish.")
        self.pid = pid


class InstallLock:
    """``acquire()`` / ``release()``, or ``with InstallLock(folder):``."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.pid = os.getpid() if pid is None else pid
        self._held = False

    def owner(self) -> int | None:
        """The pid written in the lock file, or None (no file, or unreadable: treated as stale)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return int(data["pid"]) if data.get("host") in (None, socket.gethostname()) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # the second try follows removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and owner != self.pid and pid_alive(owner):
                    raise LockBusy(self.path, owner) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": self.pid, "host": socket.gethostname()}, f)
            self._held = True
            return
        raise LockBusy(self.path, self.owner() or -1)

    def release(self) -> None:
        if self._held:
            self._held = False
            if self.owner() == self.pid:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    @property
    def held(self) -> bool:
        return self._held

    def __enter__(self) -> InstallLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
