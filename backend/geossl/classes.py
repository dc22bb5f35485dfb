"""The class table: names, raster values and colours, fixed per model and saved with it.

A model predicts indices 0..K-1; the maps it writes use each class's *value*. When the user's
class field holds small integer codes, those codes are kept as the values (a GIS user expects
``cid = 3`` to come out as pixel value 3); otherwise classes are numbered 1..K in sorted order.
Value 0 (or 255 when 0 is a class code) marks nodata in the classified map.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from .errors import GeoSSLError

# A readable qualitative palette (ColorBrewer Set1/Dark2-like), extended for many classes.
DEFAULT_PALETTE = (
    "#1f78b4", "#33a02c", "#e31a1c", "#ff7f00", "#6a3d9a", "#b15928", "#a6cee3", "#b2df8a",
    "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
)
IGNORE_INDEX = 255  # label value for unlabeled pixels: ignored by the loss, never "background"


def _check_colour(colour: str) -> str:
    c = colour.strip()
    if not (len(c) == 7 and c.startswith("#") and all(ch in "0123456789abcdefABCDEF" for ch in c[1:])):
        raise GeoSSLError(f"Colour '{colour}' is not a #rrggbb colour.", "write colours like #33a02c.")
    return c.lower()


@dataclass(frozen=True)
class ClassTable:
    """Ordered classes: model index i ↔ ``names[i]``, map value ``values[i]``, colour ``colors[i]``."""

    names: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.values) == len(self.colors)):
            raise ValueError("names, values and colors must have the same length")
        if len(self.names) < 2:
            raise GeoSSLError(
                f"Only {len(self.names)} class found ({', '.join(self.names) or 'none'}).",
                "draw polygons of at least two classes.",
            )
        if len(self.names) > 254:
            raise GeoSSLError(f"{len(self.names)} classes is too many.", "use at most 254 classes.")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nodata_value(self) -> int:
        return 255 if 0 in self.values else 0

    @classmethod
    def from_field_values(
        cls, raw_values: Iterable[object], colours: Mapping[str, str] | None = None
    ) -> ClassTable:
        """Build the table from a class field's values (strings or integers)."""
        uniq = {v for v in raw_values if v is not None}
        numeric = all(isinstance(v, int | float) and float(v).is_integer() for v in uniq)
        if numeric:
            codes = sorted(int(v) for v in uniq)
            names = tuple(str(c) for c in codes)
            values = tuple(codes) if all(0 <= c <= 254 for c in codes) else tuple(range(1, len(codes) + 1))
        else:
            names = tuple(sorted(str(v) for v in uniq))
            values = tuple(range(1, len(names) + 1))
        colours = {str(k): _check_colour(v) for k, v in (colours or {}).items()}
        colors = tuple(colours.get(n, DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)]) for i, n in enumerate(names))
        return cls(names, values, colors)

    def index_of(self, name: str) -> int:
        return self.names.index(name)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table for the classified map (nodata transparent)."""
        cmap = {self.nodata_value: (0, 0, 0, 0)}
        for value, colour in zip(self.values, self.colors, strict=True):
            cmap[value] = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255)
        return cmap

    def to_dict(self) -> dict:
        return {"names": list(self.names), "values": list(self.values), "colors": list(self.colors)}

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassTable:
        return cls(tuple(d["names"]), tuple(int(v) for v in d["values"]), tuple(d["colors"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def write_qml(path: str | Path, table: ClassTable, band_name: str = "class") -> None:
    """A QGIS style sidecar (``<map>.qml``): QGIS loads it with the layer, so classes show named
    and coloured without any plugin."""
    entries = "\n".join(
        f'          <paletteEntry value="{v}" color="{c}" alpha="255" label={quoteattr(n)}/>'
        for n, v, c in zip(table.names, table.values, table.colors, strict=True)
    )
    qml = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
    Path(path).write_text(qml, encoding="utf-8")
