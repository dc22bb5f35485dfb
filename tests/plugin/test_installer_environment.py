"""The one cleaning of child environments: backend runs and the set-up's pip/venv commands."""

from __future__ import annotations

from pathlib import Path

from geossl_plugin.backend import backend_environment
from geossl_plugin.installer.environment import backend_environ, installer_environ, is_qgis_only
from qgis.PyQt.QtCore import QProcessEnvironment

QGIS_LIKE = {
    "PYTHONPATH": "/usr/share/qgis/python", "PYTHONHOME": "C:/OSGeo4W/apps/Python312",
    "PYTHONUSERBASE": "/u", "PYTHONSTARTUP": "/s.py", "VIRTUAL_ENV": "/venv", "PIP_INDEX_URL": "http://x",
    "PIP_TARGET": "/t", "QGIS_PREFIX_PATH": "/qgis", "PROJ_LIB": "/p", "PROJ_DATA": "/p", "GDAL_DATA": "/g",
    "GDAL_DRIVER_PATH": "/g/plugins", "LD_LIBRARY_PATH": "/qgis/lib", "LD_PRELOAD": "/x.so",
    "DYLD_LIBRARY_PATH": "/d", "DYLD_FRAMEWORK_PATH": "/d", "DYLD_INSERT_LIBRARIES": "/d.dylib",
    "QT_PLUGIN_PATH": "/q", "PYQGIS_STARTUP": "/s.py", "OSGEO4W_ROOT": "C:/OSGeo4W",
}
USER = {"PATH": "/usr/bin", "HOME": "/home/u", "CUDA_VISIBLE_DEVICES": "1", "GDAL_HTTP_TIMEOUT": "30",
        "TEMP": "/tmp"}


def test_every_qgis_variable_is_dropped_and_the_users_kept() -> None:
    env = backend_environ({**QGIS_LIKE, **USER})
    assert env == {**USER, "PYTHONIOENCODING": "utf-8"}
    assert is_qgis_only("pythonpath") and is_qgis_only("Qgis_Debug") and not is_qgis_only("GDAL_HTTP_TIMEOUT")


def test_the_qt_flavour_uses_the_same_definition() -> None:
    base = QProcessEnvironment()
    for name, value in {**QGIS_LIKE, **USER}.items():
        base.insert(name, value)
    env = backend_environment(base)
    assert sorted(env.keys()) == sorted([*USER, "PYTHONIOENCODING"])


def test_installer_isolates_python_and_passes_the_proxy_both_spellings() -> None:
    env = installer_environ({**QGIS_LIKE, **USER}, proxy=" http://user:pw@proxy.corp:3128 ")
    assert env["PYTHONNOUSERSITE"] == "1" and env["PYTHONSAFEPATH"] == "1"
    assert env["PIP_NO_INPUT"] == "1" and "PIP_INDEX_URL" not in env and "PIP_TARGET" not in env
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://user:pw@proxy.corp:3128"
    assert not any(name in env for name in QGIS_LIKE)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_no_proxy_setting_keeps_the_users_proxy() -> None:
    env = installer_environ({**USER, "HTTPS_PROXY": "http://own:8080"}, proxy="")
    assert env["HTTPS_PROXY"] == "http://own:8080" and "HTTP_PROXY" not in env


def test_stale_certificate_bundles_are_dropped_existing_ones_kept(tmp_path: Path) -> None:
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = installer_environ({**USER, "SSL_CERT_FILE": str(bundle),
                             "REQUESTS_CA_BUNDLE": str(tmp_path / "gone.pem")})
    assert env["SSL_CERT_FILE"] == str(bundle) and "REQUESTS_CA_BUNDLE" not in env


def test_the_callers_mapping_is_not_modified() -> None:
    base = {**QGIS_LIKE, **USER}
    installer_environ(base, proxy="http://p:1")
    assert base == {**QGIS_LIKE, **USER}


def test_proxy_url_from_qgis_settings() -> None:
    from geossl_plugin.installer.environment import proxy_url

    http = {"proxy/proxyEnabled": "true", "proxy/proxyType": "HttpProxy", "proxy/proxyHost": "proxy.corp",
            "proxy/proxyPort": "3128", "proxy/proxyUser": "ana@corp", "proxy/proxyPassword": "p:w/1"}
    assert proxy_url(http) == "http://ana%40corp:p%3Aw%2F1@proxy.corp:3128"
    assert proxy_url({**http, "proxy/proxyUser": ""}) == "http://proxy.corp:3128"
    assert proxy_url({**http, "proxy/proxyEnabled": False}) == ""
    assert proxy_url({**http, "proxy/proxyType": "DefaultProxy"}) == "", "the system proxy: pip reads it itself"
    assert proxy_url({**http, "proxy/proxyType": "Socks5Proxy"}) == ""
    assert proxy_url({}) == ""


def test_a_company_certificate_goes_to_pip_and_ssl(tmp_path: Path) -> None:
    bundle = tmp_path / "corp-root.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = installer_environ({**USER, "SSL_CERT_FILE": str(tmp_path / "gone.pem")}, cert=f" {bundle} ")
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert env[name] == str(bundle)
    assert "PIP_CERT" not in installer_environ(USER), "no certificate chosen: none invented"


def test_a_socks_proxy_is_named_because_pip_cannot_use_it() -> None:
    from geossl_plugin.installer.environment import proxy_note

    socks = {"proxy/proxyEnabled": "true", "proxy/proxyType": "Socks5Proxy", "proxy/proxyHost": "socks.corp",
             "proxy/proxyPort": "1080"}
    note = proxy_note(socks)
    assert "SOCKS5 proxy (socks.corp:1080)" in note and "HTTP proxy" in note
    assert proxy_note({**socks, "proxy/proxyType": "HttpProxy"}) == ""
    assert proxy_note({**socks, "proxy/proxyEnabled": "false"}) == "" and proxy_note({}) == ""
