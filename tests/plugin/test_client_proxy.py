"""With a proxy set in QGIS's Options, requests to a backend on this machine still go direct.

A real HTTP server on 127.0.0.1 answers; QGIS's proxy (conftest's ``qgis_proxy``) is one nothing
listens on, so any request it carried would fail. Remote backends keep the user's proxy.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from geossl_plugin.client import ApiClient, BlockingClient, Connection, bypass_proxy_for_loopback, is_loopback
from qgis.core import QgsNetworkAccessManager


class _Health(BaseHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass

    def do_GET(self) -> None:
        raw = json.dumps({"status": "ok", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def local_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8765", True), ("http://localhost:8765", True), ("http://[::1]:8765", True),
    ("http://127.0.0.2:80", True), ("http://gpu-box:8765", False), ("http://10.0.0.5:8765", False),
    ("https://geossl.example.org", False),
])
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_the_panel_client_reaches_a_local_backend_through_a_proxy_setting(
        qgis_proxy: dict[str, object], local_url: str, qtbot: Any) -> None:
    assert QgsNetworkAccessManager.instance().fallbackProxy().port() == 9, "the proxy setting is live"
    client = ApiClient(Connection(local_url))
    answers: list[Any] = []
    errors: list[Any] = []
    client.get("/health", answers.append, errors.append)
    qtbot.waitUntil(lambda: bool(answers or errors), timeout=10_000)
    assert not errors, errors[0].message
    assert answers == [{"status": "ok", "path": "/health"}]


def test_processing_s_blocking_client_too_on_its_worker_thread(qgis_proxy: dict[str, object],
                                                               local_url: str) -> None:
    results: list[Any] = []

    def work() -> None:
        try:
            results.append(BlockingClient(Connection(local_url)).get("/info"))
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            results.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(20)
    assert results == [{"status": "ok", "path": "/info"}]


def test_remote_backends_keep_the_proxy_and_nothing_is_saved(qgis_proxy: dict[str, object],
                                                             local_url: str) -> None:
    manager = QgsNetworkAccessManager.instance()
    before = list(manager.noProxyList())
    bypass_proxy_for_loopback("http://gpu-box:8765", manager)
    assert list(manager.noProxyList()) == before
    bypass_proxy_for_loopback(local_url, manager)
    bypass_proxy_for_loopback(local_url, manager)  # added once, however many requests
    assert list(manager.noProxyList()) == [*before, local_url]
    from qgis.core import QgsSettings

    assert local_url not in str(QgsSettings().value("proxy/proxyExcludedUrls", ""))
