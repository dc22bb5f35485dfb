"""QGIS layers ↔ what the backend needs: file paths, class colours, and styled result layers.

The backend reads files, not QGIS layers, so every layer handed to it must be a saved file; this
module says clearly when one is not. Everything here is a plain function (no network, no widgets),
so it is tested directly against real QGIS layers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsFeatureRequest,
    QgsField,
    QgsFields,
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor

GROUP_NAME = "GeoSSL"
CONFIDENCE_RAMP = "Viridis"


class LayerError(Exception):
    """A layer cannot be given to the backend as it is; the message says what to do."""


class UnsavedEditsError(LayerError):
    """The layer has edits that are not saved yet: the backend would read the old file."""

    def __init__(self, layer: QgsVectorLayer) -> None:
        super().__init__(f"Layer '{layer.name()}' has unsaved edits: save them (Toggle Editing ▸ Save) "
                         "so the backend reads the polygons you see.")
        self.layer = layer


@dataclass(frozen=True)
class ClassInfo:
    """A model's classes as the backend describes them: pixel value, name and colour per class."""

    names: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassInfo:
        """From the backend's class table ``{"names": [...], "values": [...], "colors": [...]}``."""
        names = tuple(str(n) for n in data["names"])
        values = tuple(int(v) for v in data.get("values") or range(1, len(names) + 1))
        colors = tuple(str(c) for c in data.get("colors") or ("#888888",) * len(names))
        if not len(names) == len(values) == len(colors):
            raise ValueError("class names, values and colours differ in length")
        return cls(names, values, colors)


# --- file paths ---------------------------------------------------------------------------------

def _decoded(layer: QgsMapLayer) -> dict[str, Any]:
    return QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source()) or {}


def raster_path(layer: QgsRasterLayer) -> str:
    """The file behind a raster layer, or LayerError if the backend cannot read it as a file."""
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise LayerError(f"'{layer.name() if layer else '?'}' is not a valid raster layer.")
    path = str(_decoded(layer).get("path") or "")
    if layer.providerType() != "gdal" or not path or not os.path.isfile(path):
        raise LayerError(f"Raster layer '{layer.name()}' is not a local file (it comes from "
                         f"'{layer.providerType()}'): export it as a GeoTIFF (right-click ▸ Export ▸ "
                         "Save As…) and use that layer.")
    return path


def polygon_source(layer: QgsVectorLayer) -> tuple[str, str | None]:
    """(file, layer name inside the file or None) of a saved polygon layer, else LayerError.

    A memory ("scratch") layer or one with unsaved edits would leave the backend reading nothing,
    or an older version of the polygons, so both are refused with what to do about it.
    """
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise LayerError(f"'{layer.name() if layer else '?'}' is not a valid vector layer.")
    if layer.providerType() == "memory":
        raise LayerError(f"Layer '{layer.name()}' is a temporary scratch layer: save it to a file first "
                         "(right-click ▸ Make Permanent…, e.g. as a GeoPackage).")
    if layer.isEditable() and layer.isModified():
        raise UnsavedEditsError(layer)
    parts = _decoded(layer)
    path = str(parts.get("path") or "")
    if layer.providerType() != "ogr" or not path or not os.path.isfile(path):
        raise LayerError(f"Layer '{layer.name()}' is not a local file (it comes from "
                         f"'{layer.providerType()}'): save it as a GeoPackage first.")
    if layer.subsetString():
        raise LayerError(f"Layer '{layer.name()}' has a filter ({layer.subsetString()}) that the backend "
                         "would not apply: remove the filter, or export the filtered features to a file.")
    name = parts.get("layerName") or None
    return path, (str(name) if name else None)


# --- class colours ------------------------------------------------------------------------------

def _class_key(value: Any) -> str:
    """A category value as the backend names classes: integer codes without ".0", text as is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unquoted(expression: str) -> str:
    expression = expression.strip()
    if len(expression) >= 2 and expression[0] == expression[-1] == '"':
        return expression[1:-1].replace('""', '"')
    return expression


def categorized_field(layer: QgsVectorLayer) -> str | None:
    """The field a layer's categorized renderer classifies by (None for other renderers/expressions)."""
    renderer = layer.renderer() if isinstance(layer, QgsVectorLayer) else None
    if not isinstance(renderer, QgsCategorizedSymbolRenderer):
        return None
    name = _unquoted(renderer.classAttribute())
    return name if layer.fields().indexOf(name) >= 0 else None


def class_colours(layer: QgsVectorLayer, field: str) -> dict[str, str]:
    """Class → ``#rrggbb`` from the layer's categorized renderer when it classifies by ``field``.

    The user already chose colours when styling the polygons; the map should use the same ones.
    Returns {} for any other renderer, another field, or the "all other values" category.
    """
    if categorized_field(layer) != field:
        return {}
    colours: dict[str, str] = {}
    for category in layer.renderer().categories():
        value = category.value()
        if value is None or value == "" or category.symbol() is None:
            continue
        colours[_class_key(value)] = category.symbol().color().name()
    return colours


# --- training polygons ---------------------------------------------------------------------------

def class_category(value: str, colour: str | None = None) -> QgsRendererCategory:
    """A category for one class (a random pleasant colour unless given), labelled with its value."""
    if colour is None:
        colour = QColor.fromHsv(random.randrange(360), 160, 220).name()
    return QgsRendererCategory(value, QgsFillSymbol.createSimple({"color": colour, "outline_color": "#333333"}),
                               str(value))


def create_label_layer(path: str, field: str = "class", crs: QgsCoordinateReferenceSystem | None = None,
                       classes: Iterable[str] = (), name: str | None = None) -> QgsVectorLayer:
    """A new, empty polygon GeoPackage with a text class field, styled Categorized by that field.

    Saved to a file from the start so the backend can read it as soon as the user saves their
    edits; the categorized style is what ``class_colours`` reads, so the colours the user gives
    the classes become the map's colours. ``classes`` pre-creates one category per name.
    """
    if not path.lower().endswith(".gpkg"):
        path += ".gpkg"
    layer_name = name or os.path.splitext(os.path.basename(path))[0] or "labels"
    fields = QgsFields()
    fields.append(QgsField(field, QVariant.String))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = layer_name
    writer = QgsVectorFileWriter.create(path, fields, QgsWkbTypes.Polygon,
                                        crs or QgsCoordinateReferenceSystem(), QgsCoordinateTransformContext(),
                                        options)
    failed = writer.hasError() != QgsVectorFileWriter.NoError
    message = writer.errorMessage()
    del writer  # closes the file
    if failed:
        raise LayerError(f"Could not create {path}: {message}")
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", layer_name, "ogr")
    if not layer.isValid():
        raise LayerError(f"QGIS cannot open the new layer {path}.")
    categories = [class_category(c) for c in dict.fromkeys(c.strip() for c in classes) if c]
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    return layer


def class_counts(layer: QgsVectorLayer, field: str) -> dict[Any, tuple[int, float]]:
    """class value → (polygons, area in the layer CRS's map units²), including unsaved edits.

    Shown before training so a class with one polygon (nothing left to validate on) or a
    single-class layer is noticed before a job is spent on it. Features without a class count
    under ``None``; features without a geometry are skipped (the backend cannot rasterize them).
    """
    index = layer.fields().indexOf(field) if isinstance(layer, QgsVectorLayer) else -1
    if index < 0:
        return {}
    request = QgsFeatureRequest().setSubsetOfAttributes([index])
    counts: dict[Any, tuple[int, float]] = {}
    for feature in layer.getFeatures(request):
        geometry = feature.geometry()
        if geometry is None or geometry.isEmpty():
            continue
        value = feature.attribute(index)
        if value is None or (hasattr(value, "isNull") and value.isNull()) or value == "":
            value = None
        n, area = counts.get(value, (0, 0.0))
        counts[value] = (n + 1, area + geometry.area())
    return counts


# --- the class field -----------------------------------------------------------------------------

# Names people give the class field, the most telling first ("fclass": OpenStreetMap extracts).
CLASS_FIELD_NAMES = ("class", "classe", "klasse", "clase", "fclass", "class_name", "classname", "label", "landuse",
                     "land_use", "landcover", "land_cover", "lc", "lulc", "type", "category", "cat", "name")
# Identifiers: one value per feature, never a class.
ID_FIELD_NAMES = frozenset({"fid", "ogc_fid", "objectid", "gid", "id", "uid", "uuid", "osm_id"})
FEW_FEATURES = 5  # up to here every polygon may be its own class
MAX_CLASSES = 50  # a field found by its values alone has at most this many (and at most half the polygons)
MAX_COUNTED = 10_000  # distinct values counted per field; more is an identifier, not classes


@dataclass(frozen=True)
class FieldStats:
    """What the class-field guess knows of one text or integer attribute."""

    name: str
    text: bool
    distinct: int  # distinct non-empty values, counted up to MAX_COUNTED + 1
    key: bool = False  # part of the layer's primary key


def guess_class_field(fields: Iterable[FieldStats], features: int, styled: str | None = None) -> str | None:
    """The field that most likely holds each polygon's class, or None when no field looks like one.

    In order: the field the layer is styled Categorized by (the user's own choice); a field with a
    class-like name (``class`` first, then the order of CLASS_FIELD_NAMES); a text field with 2 to
    min(50, half the polygons) distinct values. Never a primary key, ``fid`` or any other field with a
    value per polygon: picking one made every polygon its own class (423 "classes" from ``fid``).
    """
    fields = list(fields)
    if styled and any(f.name == styled for f in fields):
        return styled

    def identifier(f: FieldStats) -> bool:
        every_own = features > FEW_FEATURES and f.distinct >= features
        return f.key or f.name.lower() in ID_FIELD_NAMES or every_own or f.distinct > MAX_COUNTED

    candidates = [f for f in fields if not identifier(f)]
    named = [(CLASS_FIELD_NAMES.index(f.name.lower()), i) for i, f in enumerate(candidates)
             if f.name.lower() in CLASS_FIELD_NAMES and f.distinct <= max(MAX_CLASSES, features / 2)]
    if named:
        return candidates[min(named)[1]].name
    most = min(MAX_CLASSES, features / 2)
    return next((f.name for f in candidates if f.text and 2 <= f.distinct <= most), None)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (hasattr(value, "isNull") and value.isNull())


def field_stats(layer: QgsVectorLayer) -> list[FieldStats]:
    """FieldStats of a layer's text and integer fields (the ones a class field can be), edits included."""
    keys = set(layer.primaryKeyAttributes())
    limit = min(max(MAX_CLASSES, layer.featureCount() // 2), MAX_COUNTED) + 1  # enough to tell the rules apart
    stats = []
    for index, field in enumerate(layer.fields()):
        text = field.type() == QVariant.String
        if not text and field.type() not in (QVariant.Int, QVariant.LongLong, QVariant.UInt, QVariant.ULongLong):
            continue
        distinct = sum(1 for value in layer.uniqueValues(index, limit) if not _is_empty(value))
        stats.append(FieldStats(field.name(), text, distinct, index in keys))
    return stats


def class_field_of(layer: QgsVectorLayer) -> str | None:
    """The class field to preselect for ``layer`` (see ``guess_class_field``)."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        return None
    return guess_class_field(field_stats(layer), layer.featureCount(), categorized_field(layer))


# --- result layers ------------------------------------------------------------------------------

def paletted_renderer(layer: QgsRasterLayer, classes: ClassInfo) -> QgsPalettedRasterRenderer:
    """One palette entry per class, labelled with its name (nodata stays transparent)."""
    entries = [QgsPalettedRasterRenderer.Class(float(v), QColor(c), n)
               for n, v, c in zip(classes.names, classes.values, classes.colors, strict=True)]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries)


def confidence_renderer(layer: QgsRasterLayer, ramp_name: str = CONFIDENCE_RAMP) -> QgsSingleBandPseudoColorRenderer:
    """A fixed 0–1 ramp, so that two confidence maps are coloured alike and comparable by eye."""
    ramp = QgsStyle.defaultStyle().colorRamp(ramp_name)
    shader_function = QgsColorRampShader(0.0, 1.0)
    shader_function.setColorRampType(QgsColorRampShader.Interpolated)
    if ramp is not None:
        shader_function.setSourceColorRamp(ramp)
        shader_function.classifyColorRamp(5, -1)  # evenly spaced stops from min to max
    else:
        shader_function.setColorRampItemList([QgsColorRampShader.ColorRampItem(0.0, QColor("#000000"), "0"),
                                              QgsColorRampShader.ColorRampItem(1.0, QColor("#ffffff"), "1")])
    shader = QgsRasterShader(0.0, 1.0)
    shader.setRasterShaderFunction(shader_function)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    return renderer


def result_group(project: QgsProject, name: str = GROUP_NAME) -> QgsLayerTreeGroup:
    """The project's "GeoSSL" group, created at the top of the layer tree when missing."""
    root = project.layerTreeRoot()
    return root.findGroup(name) or root.insertGroup(0, name)


def add_result_layers(classes_path: str, classes: ClassInfo | None, confidence_path: str | None = None,
                      name: str = "GeoSSL classes", project: QgsProject | None = None,
                      ) -> tuple[QgsRasterLayer, QgsRasterLayer | None]:
    """Add a predicted map (paletted with the model's colours) and its confidence (ramp, hidden).

    Loading the GeoTIFF already applies the ``.qml`` the backend wrote beside it; the renderer is
    still set here so the colours are right even when the style file is missing or outdated.
    """
    project = project or QgsProject.instance()
    layer = QgsRasterLayer(classes_path, name, "gdal")
    if not layer.isValid():
        raise LayerError(f"QGIS cannot open the result {classes_path}.")
    if classes is not None:
        layer.setRenderer(paletted_renderer(layer, classes))
    confidence = None
    if confidence_path:
        confidence = QgsRasterLayer(confidence_path, f"{name} – confidence", "gdal")
        if not confidence.isValid():
            raise LayerError(f"QGIS cannot open the confidence raster {confidence_path}.")
        confidence.setRenderer(confidence_renderer(confidence))
    group = result_group(project)
    project.addMapLayer(layer, False)
    if confidence is not None:
        project.addMapLayer(confidence, False)
        group.insertLayer(0, confidence).setItemVisibilityChecked(False)
    group.insertLayer(0, layer)
    return layer, confidence


def polygon_renderer(classes: ClassInfo, field: str = "class_id") -> QgsCategorizedSymbolRenderer:
    """Polygons categorized by class value, filled with the model's colours and labelled with its names."""
    categories = [QgsRendererCategory(int(v), QgsFillSymbol.createSimple(
                      {"color": c, "outline_color": QColor(c).darker(200).name(), "outline_width": "0.2"}), n)
                  for n, v, c in zip(classes.names, classes.values, classes.colors, strict=True)]
    return QgsCategorizedSymbolRenderer(field, categories)


def add_polygon_layer(path: str, classes: ClassInfo | None, name: str = "GeoSSL polygons",
                      project: QgsProject | None = None) -> QgsVectorLayer:
    """Add the polygons of a prediction (``predict --vector``) on top of the GeoSSL group, in class colours."""
    project = project or QgsProject.instance()
    layer = QgsVectorLayer(path, name, "ogr")
    if not layer.isValid():
        raise LayerError(f"QGIS cannot open the polygons {path}.")
    if classes is not None:
        layer.setRenderer(polygon_renderer(classes))
    project.addMapLayer(layer, False)
    result_group(project).insertLayer(0, layer)
    return layer


def palette_of(layer: QgsRasterLayer) -> dict[int, tuple[str, str]]:
    """value → (label, #rrggbb) of a paletted layer: what the user sees in the legend."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsPalettedRasterRenderer):
        return {}
    return {int(c.value): (c.label, c.color.name()) for c in renderer.classes()}

