"""Where the backend service is: the user's saved choice (local or remote) and the discovery file.

A local service picks a free port and writes ``{url, token, pid}`` to a discovery file in its data
directory; the panel and the Processing algorithms both find it there, so they share one service.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from .client import Connection
from .installer.lock import pid_alive as process_exists

MODE_KEY = "geossl/connection/mode"
URL_KEY = "geossl/connection/url"
TOKEN_KEY = "geossl/connection/token"
AUTOSTART_KEY = "geossl/connection/autostart"
DATA_DIR_KEY = "geossl/connection/data_dir"

LOCAL = "local"
REMOTE = "remote"
DISCOVERY_FILE = "service.json"


@dataclass(frozen=True)
class Discovery:
    """What a running local service wrote about itself."""

    url: str
    token: str
    pid: int | None
    path: Path

    @property
    def connection(self) -> Connection:
        return Connection(self.url, self.token)


def data_dir() -> Path:
    """``<QGIS profile>/geossl``: models, job outputs and the discovery file of the local service."""
    saved = str(QgsSettings().value(DATA_DIR_KEY, "", type=str) or "").strip()
    return Path(saved) if saved else Path(QgsApplication.qgisSettingsDirPath()) / "geossl"


def discovery_path(directory: Path | None = None) -> Path:
    return (directory or data_dir()) / DISCOVERY_FILE


def read_discovery(path: Path) -> Discovery | None:
    """The discovery file's content, or None while it is missing, partial or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    pid = data.get("pid")
    return Discovery(url=data["url"], token=str(data.get("token") or ""),
                     pid=int(pid) if isinstance(pid, int) else None, path=path)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (a stale discovery file outlives a killed service)."""
    return bool(pid) and process_exists(pid)


def remove_stale_discovery(path: Path) -> None:
    found = read_discovery(path)
    if found is not None and not pid_alive(found.pid):
        with contextlib.suppress(OSError):
            path.unlink()


# --- saved choice ---------------------------------------------------------------------------------

def mode() -> str:
    value = str(QgsSettings().value(MODE_KEY, LOCAL, type=str) or LOCAL)
    return value if value in (LOCAL, REMOTE) else LOCAL


def set_mode(value: str) -> None:
    QgsSettings().setValue(MODE_KEY, value if value in (LOCAL, REMOTE) else LOCAL)


def remote_connection() -> Connection:
    settings = QgsSettings()
    return Connection(str(settings.value(URL_KEY, "", type=str) or ""),
                      str(settings.value(TOKEN_KEY, "", type=str) or ""))


def save_remote_connection(connection: Connection) -> None:
    settings = QgsSettings()
    settings.setValue(URL_KEY, connection.url)
    settings.setValue(TOKEN_KEY, connection.token)


def autostart() -> bool:
    return bool(QgsSettings().value(AUTOSTART_KEY, True, type=bool))


def set_autostart(value: bool) -> None:
    QgsSettings().setValue(AUTOSTART_KEY, bool(value))
