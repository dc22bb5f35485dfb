"""The environment of every child the plugin starts: the backend and the set-up's pip/venv commands.

QGIS points its own Python, PROJ, GDAL and Qt at its installation through environment variables;
inherited by another Python they cause the classic clashes (numpy ABI, two ``proj.db``, Qt plugins,
a venv built on QGIS's ``PYTHONHOME``): see design/field-lessons.md §5 and §9. This is the one
definition of what is removed; ``plugin/backend.py`` uses it too. Stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote

REMOVED_NAMES = frozenset({
    "PYQGIS_STARTUP", "GDAL_DATA", "GDAL_DRIVER_PATH", "GDAL_FILENAME_IS_UTF8", "GEOTIFF_CSV",
    "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "LD_PRELOAD",
})
# PYTHON covers PYTHONPATH, PYTHONHOME, PYTHONUSERBASE, PYTHONSTARTUP…; DYLD_ all of macOS's loader paths.
REMOVED_PREFIXES = ("PYTHON", "PROJ_", "QT_", "QGIS_", "OSGEO4W_", "O4W_", "PIP_", "DYLD_")
# Certificate bundles that point at a file that no longer exists make every pip download fail with
# an SSL error; one that exists is the user's (corporate) choice and is kept.
CERTIFICATE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def is_qgis_only(name: str) -> bool:
    """Whether a variable belongs to QGIS's installation and must not reach a child Python."""
    upper = name.upper()
    return upper in REMOVED_NAMES or upper.startswith(REMOVED_PREFIXES)


def backend_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process) without QGIS's variables; JSON on stdout in UTF-8."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not is_qgis_only(k)}
    env["PYTHONIOENCODING"] = "utf-8"  # must not depend on the Windows code page
    return env


def installer_environ(base: Mapping[str, str] | None = None, proxy: str = "", cert: str = "") -> dict[str, str]:
    """The environment for venv/pip/probe commands of the set-up.

    On top of :func:`backend_environ`: no user site-packages and no current folder on ``sys.path``
    (a stray ``numpy/`` or ``torch.py`` beside QGIS's working folder must not be imported), stale
    certificate variables dropped, and the proxy (read by the caller from QGIS's settings, already
    as ``http://user:pass@host:port``) given to pip in both spellings; an empty proxy keeps the
    user's own proxy variables. ``cert``: a company root certificate (PEM) for HTTPS inspection,
    given to pip and to Python's ssl.
    """
    env = backend_environ(base)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONSAFEPATH"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"  # pip must never wait for a password on a stdin nobody reads
    for name in CERTIFICATE_VARIABLES:
        if name in env and not os.path.isfile(env[name]):
            del env[name]
    if cert.strip():
        for name in ("PIP_CERT", *CERTIFICATE_VARIABLES):
            env[name] = cert.strip()
    proxy = proxy.strip()
    if proxy:
        for name in PROXY_VARIABLES:
            env[name] = proxy
    return env


def proxy_url(settings: Mapping[str, object]) -> str:
    """The HTTP(S) proxy from QGIS's network settings (``proxy/*`` keys of QgsSettings), as a URL.

    "" when QGIS uses no proxy or the system's (``DefaultProxy``: pip finds it in the environment
    itself) or a SOCKS one (pip cannot use SOCKS without an extra package).
    """
    enabled = str(settings.get("proxy/proxyEnabled", "false")).lower() in ("true", "1")
    kind = str(settings.get("proxy/proxyType", "DefaultProxy"))
    host = str(settings.get("proxy/proxyHost", "") or "").strip()
    if not enabled or not host or kind not in ("HttpProxy", "HttpCachingProxy"):
        return ""
    port = str(settings.get("proxy/proxyPort", "") or "").strip()
    user = str(settings.get("proxy/proxyUser", "") or "")
    password = str(settings.get("proxy/proxyPassword", "") or "")
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    return f"http://{auth}{host}" + (f":{port}" if port and port != "0" else "")


def proxy_note(settings: Mapping[str, object]) -> str:
    """A sentence for the set-up dialog when QGIS's proxy cannot reach pip (SOCKS), else ""."""
    enabled = str(settings.get("proxy/proxyEnabled", "false")).lower() in ("true", "1")
    kind = str(settings.get("proxy/proxyType", ""))
    if not enabled or kind != "Socks5Proxy":
        return ""
    where = str(settings.get("proxy/proxyHost", "") or "").strip()
    port = str(settings.get("proxy/proxyPort", "") or "").strip()
    where += f":{port}" if where and port and port != "0" else ""
    return (f"QGIS uses a SOCKS5 proxy{' (' + where + ')' if where else ''}, which pip cannot use: pip will "
            "connect directly, or through HTTPS_PROXY if that is set. If downloads fail, ask for an HTTP proxy "
            "and set it in QGIS Settings → Options → Network.")
