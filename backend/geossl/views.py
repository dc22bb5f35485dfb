"""Two views of one place from different bands: RS-BYOL's spectral "augmentation".

RS-BYOL (Jain et al.) shows that two band groups of one raster, or two co-registered sensors of
the same place, make better positive pairs than colour jitter. The data loader delivers one stack
of bands per window (the raster's bands, then the paired raster's bands when there is one,
:mod:`geossl.paired`); this module picks each view's bands from that stack:

* ``groups``: fixed band groups of equal size, e.g. ``"1,2,3,7" "8,9,10,11"`` (1-based, as GDAL
  and QGIS number bands);
* ``random:k``: per sample, k bands drawn without repetition for each view, from all bands of the
  raster, or with a paired raster from the raster's bands for view 1 and the pair's for view 2
  (a source with fewer than k bands repeats some, as RS-BYOL copies a SAR channel).

The encoder then always sees k (or the group size) bands. Pure torch, no I/O: the parsing checks
the spec against band counts and raises :class:`GeoSSLError` naming the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import GeoSSLError

__all__ = ["ViewBands", "check_view_bands_syntax", "parse_view_bands", "select_views"]

RANDOM = "random:"


@dataclass(frozen=True)
class ViewBands:
    """How the two views take their bands from the stack (indices 0-based into the stack).

    ``groups`` for fixed groups; ``k`` and ``sources`` (the bands each view draws from) for random.
    """

    groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    k: int | None = None
    sources: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def channels(self) -> int:
        """Band count the encoder sees."""
        return len(self.groups[0]) if self.groups else int(self.k)

    def to_dict(self) -> dict[str, Any]:
        """1-based description for the checkpoint and ``geossl info``."""
        if self.groups:
            return {"mode": "groups", "groups": [[b + 1 for b in g] for g in self.groups]}
        return {"mode": "random", "k": self.k, "sources": [[b + 1 for b in s] for s in self.sources]}

    def describe(self) -> str:
        if self.groups:
            return " | ".join(",".join(str(b + 1) for b in g) for g in self.groups)
        return f"random {self.k} of bands " + " | ".join(",".join(str(b + 1) for b in s) for s in self.sources)


def check_view_bands_syntax(spec: Sequence[str] | None) -> None:
    """ValueError unless ``spec`` is two comma lists of band numbers or one ``random:k`` (schemas)."""
    if not spec:
        return
    if len(spec) == 1:
        text = spec[0].strip()
        if not text.startswith(RANDOM) or not text[len(RANDOM):].strip().isdigit() or int(text[len(RANDOM):]) < 1:
            raise ValueError(f"view_bands: give two band groups like '1,2,3' '4,5,6' or 'random:K', got {spec[0]!r}")
        return
    if len(spec) != 2:
        raise ValueError(f"view_bands: give exactly two band groups (one per view), got {len(spec)}")
    groups = [_numbers(s) for s in spec]
    if len(groups[0]) != len(groups[1]):
        raise ValueError(f"view_bands: the two groups must have as many bands (the encoder sees one band count), "
                         f"got {len(groups[0])} and {len(groups[1])}")


def _numbers(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"view_bands: {text!r} is not a comma-separated list of band numbers") from None
    if not out or min(out) < 1:
        raise ValueError(f"view_bands: {text!r} must list band numbers from 1")
    if len(set(out)) != len(out):
        raise ValueError(f"view_bands: {text!r} lists a band twice")
    return out


def parse_view_bands(spec: Sequence[str] | None, bands: int, pair_bands: int | None = None) -> ViewBands | None:
    """The views for a raster of ``bands`` bands (plus a paired raster of ``pair_bands``), or None.

    Without a spec, a paired raster gives view 1 = all bands of the raster, view 2 = all of the pair.
    """
    try:
        check_view_bands_syntax(spec)
    except ValueError as exc:
        text = str(exc).removeprefix("view_bands: ")
        raise GeoSSLError(text[0].upper() + text[1:] + ".",
                          "write --view-bands '1,2,3' '4,5,6' or --view-bands random:3.") from None
    stack = bands + (pair_bands or 0)
    own = tuple(range(bands))
    other = tuple(range(bands, stack))
    if not spec:
        if pair_bands is None:
            return None
        if pair_bands != bands:
            raise GeoSSLError(
                f"The raster has {bands} bands and its pair {pair_bands}: the encoder needs one band count.",
                f"choose equal groups with --view-bands (bands 1-{bands} are the raster's, {bands + 1}-{stack} "
                f"the pair's), or --view-bands random:K.")
        return ViewBands(groups=(own, other))
    if spec[0].strip().startswith(RANDOM):
        k = int(spec[0].strip()[len(RANDOM):])
        if pair_bands is None and k > bands:
            raise GeoSSLError(f"--view-bands random:{k} asks for more bands than the raster has ({bands}).",
                              f"use random:K with K ≤ {bands}.")
        return ViewBands(k=k, sources=(own, other) if pair_bands else (own, own))
    groups = tuple(tuple(b - 1 for b in _numbers(s)) for s in spec)
    too_big = sorted({b + 1 for g in groups for b in g if b >= stack})
    if too_big:
        where = f"the raster and its pair have {stack} bands together" if pair_bands else f"the raster has {bands} bands"
        raise GeoSSLError(f"--view-bands names band(s) {', '.join(map(str, too_big))}, but {where}.",
                          f"use band numbers 1-{stack}.")
    return ViewBands(groups=(groups[0], groups[1]))


def _random_bands(source: Sequence[int], k: int, n: int, generator: torch.Generator | None) -> Tensor:
    """(n, k) band indices: a random permutation of ``source`` per sample, cycled when k > len(source)."""
    src = torch.tensor(source, dtype=torch.long)
    order = torch.rand((n, len(source)), generator=generator).argsort(dim=1)
    reps = -(-k // len(source))
    return src[order.repeat(1, reps)[:, :k]]


def select_views(batch: Tensor, views: ViewBands | None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
    """(B, C_stack, H, W) → two (B, k, H, W) views of the same pixels; the batch twice without ``views``."""
    if views is None:
        return batch, batch
    if views.groups:
        g1, g2 = (torch.tensor(g, device=batch.device) for g in views.groups)
        return batch.index_select(1, g1), batch.index_select(1, g2)
    n, _, h, w = batch.shape
    out = []
    for source in views.sources:
        idx = _random_bands(source, views.k, n, generator).to(batch.device)
        out.append(batch.gather(1, idx.view(n, -1, 1, 1).expand(n, views.k, h, w)))
    return out[0], out[1]


def trained_on(checkpoint: dict[str, Any]) -> str:
    """What a pretrained checkpoint's encoder saw, for refusal messages: '' for plain checkpoints."""
    views = checkpoint.get("views")
    if not views:
        return ""
    if views["mode"] == "groups":
        what = "band groups " + " | ".join(",".join(map(str, g)) for g in views["groups"])
    else:
        what = f"{views['k']} random bands per view"
    names = [str(r).rsplit("/", 1)[-1] for r in checkpoint.get("rasters") or []]
    pairs = [str(r).rsplit("/", 1)[-1] for r in checkpoint.get("pair") or []]
    source = ", ".join(names) + (f" paired with {', '.join(pairs)}" if pairs else "")
    return f" (pretrained on {what}" + (f" of {source}" if source else "") + ")"
