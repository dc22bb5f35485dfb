"""The plugin as QGIS drives it: classFactory → initGui → action toggles the dock → unload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from geossl_plugin import classFactory
from geossl_plugin.geossl_plugin import MENU, GeoSSLPlugin
from geossl_plugin.panel import GeoSSLDock
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent

from .conftest import CPU_INFO
from .procs import running


def _flush_deletes() -> None:
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def test_class_factory_builds_plugin_without_touching_the_gui(qgis_iface: Any) -> None:
    instance = classFactory(qgis_iface)
    assert isinstance(instance, GeoSSLPlugin)
    assert instance.action is None and instance.dock is None


def test_init_gui_adds_toolbar_button_and_raster_menu_entry(iface: Any) -> None:
    instance = classFactory(iface)
    instance.initGui()
    try:
        action = instance.action
        assert action is not None and action.text() == "GeoSSL"
        assert not action.icon().isNull(), "icon.svg (a link to resources/icon.svg) did not load"
        iface.addToolBarIcon.assert_called_once_with(action)
        iface.addPluginToRasterMenu.assert_called_once_with(MENU, action)
        assert instance.dock is None, "the dock is built on first use, not at QGIS start-up"
    finally:
        instance.unload()


def test_action_opens_and_closes_the_dock(plugin: Any, fake_backend: Any, qtbot: Any) -> None:
    from geossl_plugin.backend import save_backend_path

    save_backend_path(str(fake_backend(CPU_INFO)))
    plugin.action.trigger()
    dock = plugin.dock
    assert isinstance(dock, GeoSSLDock)
    assert not dock.isHidden() and plugin.action.isChecked()
    with qtbot.waitSignal(dock.backend_section.connected, timeout=10_000):
        pass  # opening the dock starts the backend once, asynchronously

    plugin.action.trigger()
    assert dock.isHidden() and not plugin.action.isChecked()
    plugin.action.trigger()
    assert not dock.isHidden() and plugin.dock is dock, "re-opening reuses the dock"

    dock.close()  # the dock's own X button
    assert not plugin.action.isChecked(), "closing the dock must uncheck the toolbar button"


def test_unload_removes_action_menu_and_dock(iface: Any, fake_backend: Any, qtbot: Any) -> None:
    from geossl_plugin.backend import save_backend_path

    save_backend_path(str(fake_backend(CPU_INFO)))
    instance = classFactory(iface)
    instance.initGui()
    action = instance.action
    dock = instance.show_dock()
    iface.addDockWidget.assert_called_once()
    qtbot.waitSignal(dock.backend_section.connected, timeout=10_000).wait()

    instance.unload()
    _flush_deletes()
    iface.removeToolBarIcon.assert_called_once_with(action)
    iface.removePluginRasterMenu.assert_called_once_with(MENU, action)
    iface.removeDockWidget.assert_called_once_with(dock)
    assert sip.isdeleted(action) and sip.isdeleted(dock)
    assert instance.action is None and instance.dock is None
    instance.unload()  # a second unload (QGIS does this on errors) must be harmless


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch the child")
def test_unload_while_the_backend_starts_kills_it(plugin: Any, fake_backend: Any, qtbot: Any) -> None:
    from geossl_plugin.backend import save_backend_path

    save_backend_path(str(fake_backend(CPU_INFO, sleep=60)))
    dock = plugin.show_dock()  # autostart: the service is starting
    service = dock.backend_section.service()
    assert service is not None and service.is_running()
    qtbot.waitUntil(lambda: (service.pid() or 0) > 0, timeout=5_000)
    pid = service.pid()
    assert running(pid)

    plugin.unload()
    qtbot.waitUntil(lambda: not running(pid), timeout=10_000)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch the child")
def test_unload_stops_a_connected_local_backend(plugin: Any, fake_backend: Any, qtbot: Any) -> None:
    from geossl_plugin.backend import save_backend_path

    save_backend_path(str(fake_backend(CPU_INFO)))
    dock = plugin.show_dock()
    qtbot.waitSignal(dock.backend_section.connected, timeout=10_000).wait()
    pid = dock.backend_section.service().pid()
    plugin.unload()
    qtbot.waitUntil(lambda: not running(pid), timeout=10_000)


def test_no_autostart_leaves_the_backend_alone(plugin: Any, fake_backend: Any) -> None:
    from geossl_plugin import connection
    from geossl_plugin.backend import save_backend_path

    save_backend_path(str(fake_backend(CPU_INFO)))
    connection.set_autostart(False)
    dock = plugin.show_dock()
    assert dock.backend_section.service() is None
    assert dock.backend_section.connect_button.isEnabled()


def test_the_processing_provider_is_registered_and_removed(plugin: Any) -> None:
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("geossl") is plugin.provider
    ids = {a.id() for a in plugin.provider.algorithms()}
    assert ids == {"geossl:finetune", "geossl:segment", "geossl:evaluate", "geossl:pretrain", "geossl:suggest",
                   "geossl:export_onnx"}
    plugin.unload()
    assert registry.providerById("geossl") is None


def test_qgis_plugin_loader_finds_and_starts_the_plugin(qgis_iface: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """QGIS's own loader reads metadata.txt through the link and calls classFactory + initGui."""
    import qgis.utils

    from .conftest import _PLUGINS_DIR

    monkeypatch.setattr(qgis.utils, "plugin_paths", [str(_PLUGINS_DIR)])
    monkeypatch.setattr(qgis.utils, "iface", qgis_iface)
    qgis.utils.updateAvailablePlugins()
    assert "geossl_plugin" in qgis.utils.available_plugins
    assert qgis.utils.pluginMetadata("geossl_plugin", "name") == "GeoSSL"
    assert qgis.utils.loadPlugin("geossl_plugin")
    try:
        assert qgis.utils.startPlugin("geossl_plugin")
        assert qgis.utils.plugins["geossl_plugin"].action is not None
    finally:
        if "geossl_plugin" in qgis.utils.active_plugins:
            qgis.utils.plugins["geossl_plugin"].unload()
            del qgis.utils.plugins["geossl_plugin"]
            qgis.utils.active_plugins.remove("geossl_plugin")
