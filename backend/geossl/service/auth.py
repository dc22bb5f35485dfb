"""Who may talk to the service and how clients find it: token, discovery file, data-dir lock.

Every request but ``/health`` must carry ``Authorization: Bearer <token>``: on a shared machine any
local user (or a web page doing DNS rebinding) can reach 127.0.0.1, and the service writes files
as its owner. The token and the discovery file are 0600, readable by the owner only.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import GeoSSLError

log = logging.getLogger("geossl.service")

DISCOVERY_FILE = "service.json"
TOKEN_FILE = "token"
LOCK_FILE = "service.lock"
OPEN_PATHS = frozenset({"/health"})


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (never readable by others, not even briefly)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def session_token(data_dir: Path, token_file: Path | None = None) -> tuple[str, Path]:
    """The token of this session and the file holding it.

    Without ``token_file`` a fresh token is written to ``<data-dir>/token`` at every start. With
    one, its token is reused when the file exists (a remote client keeps working across restarts)
    and created otherwise.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        if path.is_file():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                log.warning("token file %s had mode %o; restricting it to 0600", path, mode)
                os.chmod(path, 0o600)
            token = path.read_text(encoding="utf-8").strip()
            if len(token) < 16:
                raise GeoSSLError(f"The token in '{path}' is shorter than 16 characters.",
                                  "delete the file to have a new token generated, or write a longer one.")
            return token, path
        if not path.parent.is_dir():
            raise GeoSSLError(f"Folder '{path.parent}' of the token file does not exist.", "create it first.")
    else:
        path = data_dir / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token, path


def token_matches(expected: str, authorization: str | None) -> bool:
    """``Bearer <token>`` compared in constant time (no timing side channel on the token)."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


class TokenAuth:
    """ASGI middleware: 401 before routing, body parsing or anything else, except on ``/health``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not token_matches(self.token, header):
                response = JSONResponse(
                    {"detail": "Missing or wrong token: send 'Authorization: Bearer <token>' with the token "
                               "from the service's token file or discovery file."},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached through loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_discovery(data_dir: Path, url: str, token: str) -> Path:
    """``{url, token, pid}`` for the plugin, written once the service listens."""
    path = data_dir / DISCOVERY_FILE
    write_private(path, json.dumps({"url": url, "token": token, "pid": os.getpid()}))
    return path


def remove_discovery(data_dir: Path) -> None:
    """Remove the discovery file if it still describes this process (never another service's)."""
    path = data_dir / DISCOVERY_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


class DataDirLock:
    """One service per data dir (one job store, one discovery file); the OS drops the lock if we die."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fh: Any = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock, the discovery file is the only guard
            return
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the service's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise GeoSSLError(
                f"Another GeoSSL service (pid {owner}) is already using the data folder '{self.path.parent}'.",
                "connect to it (its URL and token are in service.json there), stop it, or pass another --data-dir.",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
