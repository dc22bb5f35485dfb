"""``geossl serve``: the local job server the QGIS panel talks to (also usable on a remote GPU box).

The plugin never imports torch; it sends job parameters (the ``schemas`` models) over HTTP and this
service runs the same pipeline functions as the CLI, each job in its own worker process.

Modules: ``auth`` (token, discovery file, data-dir lock), ``store`` (SQLite job store), ``checks``
(submit-time validation, output policy), ``jobs`` (worker processes, queue, cancel), ``registry``
(model files), ``device`` (/health), ``app`` (routes). This module only wires them together and
stays free of heavy imports, so ``geossl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import GeoSSLError

__all__ = ["add_serve_parser", "build_serve_arguments", "default_data_dir", "serve"]

log = logging.getLogger("geossl.service")


def default_data_dir() -> Path:
    """``$GEOSSL_DATA_DIR``, else ``~/.local/share/geossl`` (``$XDG_DATA_HOME`` respected)."""
    env = os.environ.get("GEOSSL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "geossl"


class _ConsoleHandler(logging.StreamHandler):
    """Logging to stderr that goes quiet, instead of failing, once nobody reads it (QGIS closed)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if isinstance(sys.exc_info()[1], OSError):
            self.stream = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - replaces the dead console
        else:
            super().handleError(record)


def _setup_logging(data_dir: Path) -> Path:
    """Service log: rotating file in the data dir (5 MB × 4) plus stderr."""
    path = data_dir / "logs" / "service.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 2**20, backupCount=3, encoding="utf-8")
    stderr_handler = _ConsoleHandler(sys.stderr)
    root = logging.getLogger()
    for handler in (file_handler, stderr_handler):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":  # restart on the same port at once (TIME_WAIT); on Windows it would allow hijacking
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GeoSSLError(f"Cannot listen on {host}:{port}: {exc.strerror}.",
                          "choose another --port (0 picks a free one) or stop the program using it.") from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def serve(host: str = "127.0.0.1", port: int = 0, token_file: str | os.PathLike | None = None,
          data_dir: str | os.PathLike | None = None, max_jobs: int = 1, max_cpu_jobs: int = 2,
          prewarm: bool = True, predict_processes: int = 1) -> None:
    """Run the service until SIGTERM/SIGINT; running jobs are then stopped and marked resumable."""
    import uvicorn

    from .app import create_app
    from .auth import DataDirLock, client_url, remove_discovery, session_token, write_discovery
    from .jobs import JobManager
    from .registry import ModelRegistry
    from .store import JobStore

    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "models").mkdir(exist_ok=True)
        (root / "outputs").mkdir(exist_ok=True)
    except OSError as exc:
        raise GeoSSLError(f"Cannot create the data folder '{root}': {exc.strerror}.", "pass another --data-dir.") from exc
    root = root.resolve()
    lock = DataDirLock(root)
    lock.acquire()  # before logging: a refused second service must not touch the first one's log
    log_path = _setup_logging(root)
    token, token_path = session_token(root, Path(token_file) if token_file else None)
    sock = _bind(host, port)
    url = client_url(host, sock.getsockname()[1])
    store = JobStore(root / "jobs.sqlite")
    manager = JobManager(store, root, max_jobs=max_jobs, max_cpu_jobs=max_cpu_jobs, prewarm=prewarm,
                         predict_processes=predict_processes)
    registry = ModelRegistry(store, root / "models")

    stopped = threading.Event()

    def stop() -> None:
        """Stop the jobs (resumable), remove the discovery file, release the data dir; once."""
        if stopped.is_set():
            return
        stopped.set()
        manager.shutdown()
        remove_discovery(root)
        store.close()
        lock.release()
        log.info("service stopped")

    app = create_app(manager, registry, token, on_shutdown=[stop])
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines; keep the token secret and prefer an SSH "
                    "tunnel or VPN (the service speaks plain HTTP)", host)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                discovery = write_discovery(root, url, token)
                log.info("GeoSSL service %s listening on %s (data %s, token %s, discovery %s, log %s)",
                         _version(), url, root, token_path, discovery, log_path)

        def handle_exit(self, sig: int, frame: Any) -> None:
            manager.draining = True  # event streams end, so the HTTP server can stop promptly
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # Stopped cleanly: return from serve() instead of re-raising SIGTERM/SIGINT.
                getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    try:
        Server(config).run(sockets=[sock])
    finally:
        stop()


def _version() -> str:
    from .. import __version__

    return __version__


def build_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``geossl serve`` (also ``python -m geossl.service``)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for a remote "
                             "GPU box behind an SSH tunnel or VPN)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one, see the discovery file)")
    parser.add_argument("--token-file", metavar="F",
                        help="token file: its token is reused if it exists, else a new one is written there "
                             "(default: a fresh token per start in <data-dir>/token)")
    parser.add_argument("--data-dir", metavar="D",
                        help="job store, logs, models and the discovery file service.json "
                             "(default: $GEOSSL_DATA_DIR or ~/.local/share/geossl)")
    parser.add_argument("--max-jobs", type=int, default=1,
                        help="GPU jobs (pretrain, finetune, predict) running at once; the rest wait in a FIFO "
                             "queue (default 1)")
    parser.add_argument("--max-cpu-jobs", type=int, default=2,
                        help="small CPU jobs (evaluate) running beside them (default 2)")
    parser.add_argument("--predict-processes", type=int, default=1, metavar="N",
                        help="run each predict job as N local processes sharing the raster's rows (one GPU "
                             "each where there are GPUs; the cores split between them); the map is the "
                             "same as one process's (default 1)")
    parser.add_argument("--no-prewarm", action="store_true",
                        help="do not keep a worker process with the pipeline imported ready for the next job")
    return parser


def _run_serve(args: argparse.Namespace, _progress: Any = None) -> dict[str, Any]:
    serve(host=args.host, port=args.port, token_file=args.token_file, data_dir=args.data_dir,
          max_jobs=args.max_jobs, max_cpu_jobs=args.max_cpu_jobs, prewarm=not args.no_prewarm,
          predict_processes=args.predict_processes)
    return {"stopped": True}


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``geossl`` command's subparsers (``run`` and ``--json`` as main() expects)."""
    sp = subparsers.add_parser(
        "serve", help="run the local job server for the QGIS panel (HTTP, token required)",
        description="Run GeoSSL's job server: the QGIS panel (or curl) submits pretrain/finetune/predict/evaluate "
                    "jobs over HTTP; each runs in its own worker process. Stop it with Ctrl+C or SIGTERM: running "
                    "jobs are then marked interrupted and can be resumed.")
    build_serve_arguments(sp)
    sp.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    sp.set_defaults(run=_run_serve)
    return sp
