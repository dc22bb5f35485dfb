"""What a failed step means and what the user should do, read from pip/venv/torch output.

A failed install shows the matching action first and the raw log second: the recurring
complaints of field-lessons.md §9 (proxy 407, SSL inspection, no network, disk full, DLL load
failures, antivirus) each get one. Patterns are matched in order, most specific first. Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    action: str
    retry: bool = False  # worth retrying unchanged (flaky network) before giving up


_RULES: tuple[tuple[str, tuple[str, ...], str, str, bool], ...] = (
    ("proxy", (r"\b407 Proxy", r"Proxy Authentication Required", r"Tunnel connection failed: 407"),
     "The proxy asks for a user name and password (HTTP 407).",
     "Enter the proxy user and password in QGIS Settings → Options → Network, then Retry.", False),
    ("ssl", (r"CERTIFICATE_VERIFY_FAILED", r"certificate verify failed", r"SSLError", r"\[SSL[:\]]"),
     "A secure connection could not be verified (SSL certificate).",
     "A company proxy or antivirus that inspects HTTPS usually causes this: ask IT for its root "
     "certificate (a .pem file), choose it as Certificate in the set-up, or try another network; then Retry.",
     False),
    ("disk", (r"No space left on device", r"Errno 28\b", r"not enough space on the disk", r"WinError 112\b"),
     "The disk is full.", "Free some space (6 GB for a CUDA install, 2 GB for CPU) or choose another install "
     "folder, then Retry.", False),
    ("network", (r"Name or service not known", r"Temporary failure in name resolution", r"getaddrinfo failed",
                 r"Failed to establish a new connection", r"Network is unreachable", r"Connection (timed out|"
                 r"reset|refused|aborted)", r"ReadTimeoutError", r"Read timed out", r"ConnectTimeoutError",
                 r"Could not fetch URL", r"IncompleteRead", r"ProtocolError"),
     "The package index could not be reached (no network, or a firewall/proxy in the way).",
     "Check the internet connection; behind a proxy, set it in QGIS Settings → Options → Network; then Retry.",
     True),
    ("longpath", (r"WinError 206\b", r"filename or extension is too long"),
     "A file path is longer than Windows allows.",
     "Choose a short install folder such as C:\\geossl, or enable long paths in Windows, then Reinstall.", False),
    ("access", (r"WinError 5\b", r"Access is denied", r"Errno 13\b", r"Permission denied", r"WinError 32\b",
                r"being used by another process", r"Application Control policy", r"WinError 4551\b",
                r"Operation not permitted"),
     "A file could not be written or run: access denied.",
     "An antivirus or Windows' app control often blocks new programs in a fresh folder: allow the install "
     "folder (or choose another one you own), close other QGIS windows using it, then Retry.", False),
    ("vcredist", (r"DLL load failed", r"WinError 126\b", r"WinError 1114\b", r"vcruntime140", r"msvcp140",
                  r"c10\.dll"),
     "torch could not load its Windows libraries.",
     "Install the Microsoft Visual C++ Redistributable (x64, https://aka.ms/vs/17/release/vc_redist.x64.exe), "
     "restart the computer, then Retry.", False),
    ("venv", (r"ensurepip is not\s+available", r"No module named '?ensurepip", r"No module named '?venv"),
     "This Python cannot create virtual environments.",
     "On Debian/Ubuntu install the python3-venv package (sudo apt install python3-venv), then Retry.", False),
    ("python", (r"Requires-Python", r"requires a different Python", r"No matching distribution found for torch",
                r"Could not find a version that satisfies the requirement torch"),
     "No torch build exists for this Python or system.",
     "torch 2.14.1 needs a 64-bit Python 3.10–3.14; install one (python.org) and Retry, or use a remote backend.",
     False),
    ("cuda", (r"CUDA not usable", r"no kernel image is available", r"CUDA driver version is insufficient",
              r"CUDA error", r"MPS not available"),
     "torch was installed but could not compute on the GPU.",
     "Set up again with CPU, or update the NVIDIA driver and set up CUDA again.", False),
)
_COMPILED = tuple((code, re.compile("|".join(pats), re.IGNORECASE), msg, act, retry)
                  for code, pats, msg, act, retry in _RULES)


def classify(output: str, label: str = "") -> Problem:
    """The first rule whose pattern occurs in ``output``; a generic problem otherwise."""
    for code, pattern, message, action, retry in _COMPILED:
        if pattern.search(output):
            return Problem(code, message, action, retry)
    step = f"'{label}' " if label else ""
    return Problem("unknown", f"The step {step}failed.",
                   "Copy the diagnostics report (it has the last lines of the log) into a bug report.")
