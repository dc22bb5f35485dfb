"""The set-up log: every command and its output, saved for bug reports with credentials removed.

Proxy URLs carry ``user:password@`` and index URLs can carry tokens; neither may reach a file the
user is asked to paste into a public issue. Stdlib only.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

LOG_NAME = "setup.log"
_SECRETS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+(?::[^/\s@]*)?@"), r"\1***@"),  # scheme://user:pass@
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(?i)\b((?:token|password|passwd|api[_-]?key)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,]+"), r"\1***"),
)


def scrub(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def append(path: Path, text: str) -> None:
    """Add ``text`` (scrubbed) to the log; a log that cannot be written never stops the install."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(scrub(text))
    except OSError:
        pass


def header(title: str) -> str:
    return f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n"


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
