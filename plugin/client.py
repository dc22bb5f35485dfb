"""HTTP client for the GeoSSL backend service: asynchronous for the panel, blocking for Processing.

Both go through QGIS's network stack (QgsNetworkAccessManager: the user's proxy and SSL settings
apply) and share how requests are built and how answers and errors are read, so the panel and the
Processing algorithms report a backend's complaint in the same words. The asynchronous client never
waits: answers arrive as callbacks from the event loop. The blocking one is for worker threads only.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qgis.core import QgsBlockingNetworkRequest, QgsFeedback, QgsNetworkAccessManager
from qgis.PyQt.QtCore import QByteArray, QObject, QUrl, pyqtSignal
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

DEFAULT_TIMEOUT_MS = 30_000

OnOk = Callable[[Any], None]
OnError = Callable[["ApiError"], None]


@dataclass(frozen=True)
class Connection:
    """Where the backend listens and the token it expects (empty for none)."""

    url: str
    token: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.strip().rstrip("/"))
        object.__setattr__(self, "token", self.token.strip())

    def endpoint(self, path: str) -> QUrl:
        return QUrl(self.url + "/" + path.lstrip("/"))


class ApiError(Exception):
    """A failed request, phrased for the user; ``status`` is the HTTP status (0: never answered)."""

    def __init__(self, message: str, status: int = 0, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details


# --- shared: requests and answers ------------------------------------------------------------------

def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (127.0.0.0/8, ::1, localhost)."""
    host = QUrl(url).host().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bypass_proxy_for_loopback(url: str, manager: QgsNetworkAccessManager | None = None) -> None:
    """Send requests to a backend on this machine direct, never through QGIS's proxy.

    With a proxy set in QGIS's Options (common in offices), QGIS hands every URL to it, 127.0.0.1
    included, and the proxy cannot reach the user's own machine. The URL is added to the no-proxy
    list of this thread's network manager only (each thread has its own), in memory, never to the
    user's settings; it is re-checked before every request because QGIS rebuilds that list when the
    Options dialog is saved. Remote backends keep the user's proxy.
    """
    if not is_loopback(url):
        return
    manager = manager or QgsNetworkAccessManager.instance()
    no_proxy = list(manager.noProxyList())
    if any(p.strip() and url.startswith(p) for p in no_proxy):
        return
    manager.setFallbackProxyAndExcludes(manager.fallbackProxy(), manager.excludeList(), no_proxy + [url])


def build_request(connection: Connection, path: str, json_body: bool = False,
                  timeout_ms: int = DEFAULT_TIMEOUT_MS) -> QNetworkRequest:
    request = QNetworkRequest(connection.endpoint(path))
    request.setRawHeader(b"Accept", b"application/json")
    if connection.token:
        request.setRawHeader(b"Authorization", f"Bearer {connection.token}".encode())
    if json_body:
        request.setHeader(QNetworkRequest.ContentTypeHeader, "application/json")
    # Job states change all the time: a cached answer would be a wrong answer.
    request.setAttribute(QNetworkRequest.CacheLoadControlAttribute, QNetworkRequest.AlwaysNetwork)
    request.setAttribute(QNetworkRequest.CacheSaveControlAttribute, False)
    if hasattr(request, "setTransferTimeout"):  # Qt ≥ 5.15
        request.setTransferTimeout(timeout_ms)
    return request


def encode_body(body: Any) -> QByteArray:
    return QByteArray(json.dumps(body if body is not None else {}).encode("utf-8"))


def _field_name(location: Any) -> str:
    parts = [str(p) for p in (location or []) if p not in ("body", "query", "path")]
    return ".".join(parts)


def detail_text(detail: Any) -> str:
    """FastAPI's ``detail``: a sentence, or (422) a list of {loc, msg} → "tile: must be …; …"."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                msg = str(item.get("msg", item)).removeprefix("Value error, ")
                where = _field_name(item.get("loc"))
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        for key in ("message", "error", "detail"):
            if key in detail:
                text = detail_text(detail[key])
                hint = detail.get("hint") or detail.get("fix")
                return f"{text} ({hint})" if hint else text
    return json.dumps(detail)


def error_from_answer(url: str, status: int, body: bytes, network_error: str = "") -> ApiError:
    """The backend's own explanation when it gave one, else what went wrong on the way."""
    text = body.decode("utf-8", errors="replace").strip()
    explanation = ""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if key in data:
                explanation = detail_text(data[key])
                break
    if status == 0:
        return ApiError(f"GeoSSL backend at {url} is unreachable ({network_error or 'no answer'}). "
                        "Start it, or check the URL, in the Backend section.", 0, network_error)
    if status in (401, 403):
        return ApiError("The GeoSSL backend refused the token: copy the token the backend printed into "
                        "the Backend section and connect again.", status, explanation)
    if status == 422 and explanation:
        return ApiError(f"The backend rejected the parameters: {explanation}", status, text[-2000:])
    if explanation:
        return ApiError(explanation, status, text[-2000:])
    return ApiError(f"GeoSSL backend answered HTTP {status}"
                    + (f": {network_error}" if network_error else ""), status, text[-2000:])


def read_answer(url: str, status: int, body: bytes, network_error: str = "") -> Any:
    """Parsed JSON of a 2xx answer, else raise ApiError."""
    if status and 200 <= status < 300:
        text = body.decode("utf-8", errors="replace").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ApiError(f"The service at {url} did not answer with JSON: is it a GeoSSL backend?",
                           status, text[-2000:]) from exc
    raise error_from_answer(url, status, body, network_error)


# --- asynchronous: the panel ----------------------------------------------------------------------

class ApiClient(QObject):
    """Sends requests without waiting; each answer calls ``on_ok`` or ``on_error`` later.

    Failures without an ``on_error`` are emitted as ``failed`` so the dock can show them in the
    message bar. ``abort_all`` drops every pending callback (the panel is going away).
    """

    failed = pyqtSignal(object)  # ApiError

    def __init__(self, connection: Connection | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._connection = connection
        self._pending: dict[QNetworkReply, tuple[OnOk | None, OnError | None]] = {}

    @property
    def connection(self) -> Connection | None:
        return self._connection

    def set_connection(self, connection: Connection | None) -> None:
        self.abort_all()
        self._connection = connection

    def get(self, path: str, on_ok: OnOk | None = None, on_error: OnError | None = None,
            connection: Connection | None = None) -> QNetworkReply | None:
        return self._send("GET", path, None, on_ok, on_error, connection)

    def post(self, path: str, body: Any = None, on_ok: OnOk | None = None, on_error: OnError | None = None,
             connection: Connection | None = None) -> QNetworkReply | None:
        return self._send("POST", path, body, on_ok, on_error, connection)

    def pending(self) -> int:
        return len(self._pending)

    def abort_all(self) -> None:
        replies, self._pending = list(self._pending), {}
        for reply in replies:
            reply.abort()
            reply.deleteLater()

    def _send(self, method: str, path: str, body: Any, on_ok: OnOk | None, on_error: OnError | None,
              connection: Connection | None) -> QNetworkReply | None:
        connection = connection or self._connection
        if connection is None:
            self._deliver_error(ApiError("Not connected to a GeoSSL backend: start or connect it in the "
                                         "Backend section first."), on_error)
            return None
        manager = QgsNetworkAccessManager.instance()
        bypass_proxy_for_loopback(connection.url, manager)
        request = build_request(connection, path, json_body=method == "POST")
        reply = manager.post(request, encode_body(body)) if method == "POST" else manager.get(request)
        self._pending[reply] = (on_ok, on_error)
        reply.finished.connect(lambda: self._on_finished(reply, connection.url))
        return reply

    def _on_finished(self, reply: QNetworkReply, url: str) -> None:
        callbacks = self._pending.pop(reply, None)
        reply.deleteLater()
        if callbacks is None:  # aborted on purpose
            return
        on_ok, on_error = callbacks
        status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute) or 0
        network_error = reply.errorString() if reply.error() != QNetworkReply.NoError else ""
        try:
            value = read_answer(url, int(status), bytes(reply.readAll()), network_error)
        except ApiError as exc:
            self._deliver_error(exc, on_error)
            return
        if on_ok is not None:
            on_ok(value)

    def _deliver_error(self, error: ApiError, on_error: OnError | None) -> None:
        if on_error is not None:
            on_error(error)
        else:
            self.failed.emit(error)


# --- blocking: Processing algorithms (worker threads) ---------------------------------------------

class BlockingClient:
    """The same requests, answered in place; for QgsProcessingAlgorithm.processAlgorithm only.

    Never call it on the UI thread: it waits for the answer (QgsBlockingNetworkRequest).
    """

    def __init__(self, connection: Connection, feedback: QgsFeedback | None = None) -> None:
        self.connection = connection
        self.feedback = feedback

    def get(self, path: str) -> Any:
        bypass_proxy_for_loopback(self.connection.url)
        request = QgsBlockingNetworkRequest()
        code = request.get(build_request(self.connection, path), True, self.feedback)
        return self._answer(request, code)

    def post(self, path: str, body: Any = None) -> Any:
        bypass_proxy_for_loopback(self.connection.url)
        request = QgsBlockingNetworkRequest()
        code = request.post(build_request(self.connection, path, json_body=True), encode_body(body), True,
                            self.feedback)
        return self._answer(request, code)

    def _answer(self, request: QgsBlockingNetworkRequest, code: QgsBlockingNetworkRequest.ErrorCode) -> Any:
        reply = request.reply()
        status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute) or 0
        network_error = request.errorMessage() if code != QgsBlockingNetworkRequest.NoError else ""
        return read_answer(self.connection.url, int(status), bytes(reply.content()), network_error)
