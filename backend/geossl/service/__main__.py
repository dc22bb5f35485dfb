"""``python -m geossl.service``: the same as ``geossl serve`` (for installs whose CLI predates it)."""

from __future__ import annotations

import argparse
import sys

from ..errors import GeoSSLError
from . import build_serve_arguments, serve


def main(argv: list[str] | None = None) -> int:
    parser = build_serve_arguments(argparse.ArgumentParser(
        prog="python -m geossl.service", description="Run GeoSSL's local job server (see `geossl serve`)."))
    args = parser.parse_args(argv)
    try:
        serve(host=args.host, port=args.port, token_file=args.token_file, data_dir=args.data_dir,
              max_jobs=args.max_jobs, max_cpu_jobs=args.max_cpu_jobs, prewarm=not args.no_prewarm,
              predict_processes=args.predict_processes)
    except GeoSSLError as exc:
        print(f"geossl serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
