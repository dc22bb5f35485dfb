"""metadata.txt and the icon: what QGIS and plugins.qgis.org read before any plugin code runs."""

from __future__ import annotations

import configparser
import os
from urllib.parse import urlparse

import pytest
from qgis.PyQt.QtSvg import QSvgRenderer

from .conftest import REPO

# plugins.qgis.org's validator requires these (qgis-app/plugins/validator.py, PLUGIN_REQUIRED_METADATA).
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
            "repository")
ALSO_EXPECTED = ("homepage", "tags", "category", "icon", "experimental", "hasProcessingProvider", "license")


@pytest.fixture(scope="module")
def meta() -> configparser.SectionProxy:
    # Parsed the way QGIS does (default ConfigParser: interpolation on, so a stray "%" would break it)
    # and with case-sensitive keys like the plugin repository's validator.
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with open(REPO / "metadata.txt", encoding="utf-8") as f:
        parser.read_file(f)
    return parser["general"]


def test_every_required_and_expected_key_is_present(meta: configparser.SectionProxy) -> None:
    missing = [key for key in REQUIRED + ALSO_EXPECTED if not meta.get(key, "").strip()]
    assert missing == []


def test_values(meta: configparser.SectionProxy) -> None:
    assert meta["name"] == "GeoSSL"
    assert meta["qgisMinimumVersion"] == "3.22"
    assert meta["version"] == "0.1.0"
    assert meta["author"] == "GeoSSL developers" and "/" not in meta["author"]
    assert meta["email"] == "geossl@example.org"
    assert meta["category"] == "Raster"
    assert meta["icon"] == "icon.svg"
    assert meta.getboolean("experimental") is True
    assert meta["hasProcessingProvider"] == "yes"
    assert meta["license"] == "GPL-2.0-or-later"
    assert len(meta["about"].splitlines()) > 1, "about is the long, multi-line text"
    assert "\n" not in meta["description"], "description is one line"
    for key in ("tracker", "repository", "homepage"):
        url = urlparse(meta[key])
        assert url.scheme == "https" and url.netloc == "github.com", key
    assert meta["tracker"] == meta["repository"] + "/issues"
    assert all(tag.strip() for tag in meta["tags"].split(","))


def test_plugin_links_to_the_shared_metadata_and_icon() -> None:
    assert os.readlink(REPO / "plugin" / "metadata.txt") == "../metadata.txt"
    assert os.readlink(REPO / "plugin" / "icon.svg") == "../resources/icon.svg"
    assert (REPO / "plugin" / "metadata.txt").read_text() == (REPO / "metadata.txt").read_text()


def test_icon_is_a_valid_svg(qgis_app: object) -> None:
    renderer = QSvgRenderer(str(REPO / "resources" / "icon.svg"))
    assert renderer.isValid()
    assert renderer.defaultSize().width() == renderer.defaultSize().height() == 64
