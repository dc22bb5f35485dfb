"""Submit-time checks: refuse a job before anything runs, in the pipeline's own words.

The pipeline functions already check their inputs at the start of a run, but a queued job may
start an hour later; here the same checks (``raster_io``, ``labels``, ``checkpoint``) run when the
job is submitted, so the panel can show "no field 'landuse'" at once. An input that an earlier,
still active job is going to write (fine-tune → predict → evaluate submitted together) cannot be
checked yet: the job then waits for that job (``depends_on``) and the run checks it.

Also the service's file policy: it writes only the output paths it is given, never into its own
code, its virtual environment or its data folder's internals.
"""

from __future__ import annotations

import contextlib
import glob
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import GeoSSLError
from ..raster_io import RasterInfo, check_output_path, check_training_rasters, extent_window, raster_info

# Fields holding paths a job reads, per job type: any of them may be another job's output.
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "pretrain": ("rasters", "pair", "init"),
    "finetune": ("rasters", "labels", "init", "init_model"),
    "suggest": ("model", "raster", "labels"),
    "predict": ("model", "raster"),
    "export": ("model",),
    "evaluate": ("prediction", "reference", "labels"),
}


def resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def job_inputs(job_type: str, params: Mapping[str, Any]) -> list[Path]:
    return [resolve(p) for f in INPUT_FIELDS.get(job_type, ()) for p in _paths(params.get(f))]


def _pretrain_sidecars(out: str, snapshot_steps: list[int] | None) -> list[Path]:
    """The resume state, loss log and snapshots that pretraining writes beside its checkpoint.

    Snapshots planned from minutes are known only once the run has measured its steps: those on
    disk are listed too (a cancel removes the ones written since the job was created).
    """
    from ..pretrain import log_path, snapshot_path, state_path

    paths = [state_path(out), log_path(out), *(snapshot_path(out, n) for n in snapshot_steps or [])]
    stem = Path(out).stem
    written = re.compile(re.escape(stem) + r"\.step\d+\.pt")
    with contextlib.suppress(OSError, ValueError):
        paths += [p for p in Path(out).parent.glob(glob.escape(stem) + ".step*.pt") if written.fullmatch(p.name)]
    return paths


def job_outputs(job_type: str, params: Mapping[str, Any]) -> list[Path]:
    """Every file a job writes: for conflicts between jobs and for cleaning up after a cancel."""
    out = params.get("out")
    paths: list[str | Path] = [out] if out else []
    if job_type == "predict":
        paths += [p for p in (params.get("confidence"), Path(out).with_suffix(".qml")) if p]
        if params.get("vector"):  # polygons and their style
            paths += [params["vector"], Path(params["vector"]).with_suffix(".qml")]
    elif job_type == "pretrain" and out:
        paths += _pretrain_sidecars(out, params.get("snapshot_steps"))
    elif job_type == "finetune" and out:
        from ..finetune import state_path

        paths.append(state_path(out))  # the resume state written after every epoch
    return [resolve(p) for p in paths]


class OutputPolicy:
    """Where the service may write: anywhere writable except its code, its venv and its own files."""

    def __init__(self, data_dir: Path) -> None:
        import geossl

        package = Path(geossl.__file__).resolve().parent
        self.forbidden: list[tuple[Path, str]] = [
            (package, "the GeoSSL backend's code"),
            (Path(sys.prefix).resolve(), "the backend's Python environment"),
            (Path(sys.exec_prefix).resolve(), "the backend's Python environment"),
            (data_dir.resolve(), "the service's data folder"),
        ]
        if (package.parent / "pyproject.toml").is_file():  # a source checkout: backend/ with .venv inside
            self.forbidden.append((package.parent, "the GeoSSL backend's source folder"))
        self.allowed = [data_dir.resolve() / "models", data_dir.resolve() / "outputs"]

    def check(self, path: str | Path) -> Path:
        """The resolved output path, or a GeoSSLError saying why it cannot be written."""
        p = check_output_path(path).resolve()
        if any(p.is_relative_to(a) for a in self.allowed):
            return p
        for root, what in self.forbidden:
            if p.is_relative_to(root):
                raise GeoSSLError(f"Output '{p}' is inside {what} ('{root}'), where the service never writes.",
                                  "choose an output file in a folder of your own.")
        return p


@dataclass
class Plan:
    """What a checked job reads and writes, and which active jobs it must wait for."""

    outputs: list[Path]
    inputs: list[Path]
    depends_on: list[str] = field(default_factory=list)


def check_job(job_type: str, params: BaseModel, policy: OutputPolicy,
              pending: Mapping[Path, str], own_id: str | None = None) -> Plan:
    """Check ``params`` like the run will; ``pending`` maps outputs of active jobs to their ids."""
    data = params.model_dump()
    check_path_texts(job_type, data)
    try:
        return _check_job(job_type, params, data, policy, pending, own_id)
    except OSError as exc:  # a path the OS refuses to look at (too long, a loop of links…)
        raise GeoSSLError(f"Path '{exc.filename or ''}' cannot be used: {exc.strerror or exc}.",
                          "give an existing, readable file (or a writable folder for outputs).") from exc


PATH_FIELDS = ("out", "confidence", "vector")  # outputs; the inputs are INPUT_FIELDS


def check_path_texts(job_type: str, data: Mapping[str, Any]) -> None:
    """Refuse path strings no file can have (empty, no file name, NUL byte) before touching the disk."""
    for name in (*INPUT_FIELDS.get(job_type, ()), *PATH_FIELDS):
        for text in _paths(data.get(name)):
            if "\0" in text or not text.strip() or not Path(text).name:
                raise GeoSSLError(f"'{name}' is not a usable file path: {text!r}.",
                                  "give the full path of a file, e.g. /data/scene.tif.")


def _check_job(job_type: str, params: BaseModel, data: dict[str, Any], policy: OutputPolicy,
               pending: Mapping[Path, str], own_id: str | None) -> Plan:
    outputs = job_outputs(job_type, data)
    inputs = job_inputs(job_type, data)
    for out in outputs:
        writer = pending.get(out)
        if writer is not None and writer != own_id:
            raise GeoSSLError(f"Job {writer} is already going to write '{out}'.",
                              "wait for it to finish, cancel it, or choose another output file.")
        if out in inputs:
            raise GeoSSLError(f"'{out}' is both an input and an output of this job.",
                              "write the result to another file.")
    waits = {pending[p] for p in inputs if p in pending and pending[p] != own_id}
    ready = {p for p in inputs if p not in pending}

    def later(path: str | None) -> bool:
        """True when ``path`` is written by an active job and can only be checked when that is done."""
        return path is not None and resolve(path) not in ready

    checker = _CHECKERS.get(job_type)
    if checker is not None:
        checker(params, policy, later)
    elif "out" in data:
        policy.check(data["out"])
    return Plan(outputs=outputs, inputs=inputs, depends_on=sorted(waits))


# --- per job type ---------------------------------------------------------------------------------


def _check_finetune(p: Any, policy: OutputPolicy, later: Any) -> None:
    from ..labels import load_label_polygons, read_vector
    from ..weights import open_start

    policy.check(p.out)
    infos: list[RasterInfo] | None = None
    if not any(later(r) for r in p.rasters):
        infos = check_training_rasters(p.rasters)
        load_label_polygons(p.labels, p.class_field, infos, colours=p.colours, layer=p.layer)
    else:
        read_vector(p.labels, p.class_field, p.layer)
    _check_warm_start(p, infos, later)
    if p.init and later(p.init):
        return
    ck = open_start(p.init, p.encoder_weights, p.encoder)  # a GeoSSL checkpoint, outside weights, or None
    if ck is not None and not isinstance(ck, dict):
        ck.check(p.encoder, infos[0].count if infos else None, p.init_aspp)  # ImageNet cached, file loadable
    elif ck is not None:
        if ck.get("encoder") != p.encoder:
            raise GeoSSLError(
                f"The pretrained checkpoint has encoder {ck.get('encoder')}, but fine-tuning asks for {p.encoder}.",
                f"use encoder {ck.get('encoder')} or pretrain a {p.encoder}.")
        if infos and int(ck.get("in_channels", -1)) != infos[0].count:
            from ..views import trained_on

            raise GeoSSLError(
                f"The pretrained checkpoint expects {ck.get('in_channels')} bands{trained_on(ck)}, "
                f"the raster has {infos[0].count}.",
                "fine-tune on rasters with the bands the encoder was pretrained on (e.g. gdal_translate -b …).")


def _check_warm_start(p: Any, infos: list[RasterInfo] | None, later: Any) -> None:
    """``init_model``: a fine-tuned model with the rasters' bands, its encoder, and every class of the labels."""
    from ..checkpoint import load_checkpoint
    from ..finetune import warm_start_params

    if p.init_model and not later(p.init_model) and infos:
        warm_start_params(p, load_checkpoint(p.init_model, "segmentation"), infos[0].count)


def _check_suggest(p: Any, policy: OutputPolicy, later: Any) -> None:
    from ..checkpoint import load_checkpoint
    from ..labels import read_vector

    policy.check(p.out)
    info = None if later(p.raster) else raster_info(p.raster)
    if info is not None and p.window > min(info.width, info.height):
        raise GeoSSLError(f"The window ({p.window} px) is larger than the raster ({info.width}×{info.height}).",
                          "choose a smaller window.")
    if not later(p.model):
        ck = load_checkpoint(p.model, "segmentation")
        if info is not None and info.count != int(ck["in_channels"]):
            raise GeoSSLError(
                f"The model expects {ck['in_channels']} bands but '{Path(p.raster).name}' has {info.count}.",
                "suggest on a raster with the same bands as the training rasters.")
    if p.labels and not later(p.labels):
        read_vector(p.labels, p.class_field, p.layer)


def _check_predict(p: Any, policy: OutputPolicy, later: Any) -> None:
    from ..checkpoint import load_checkpoint

    out = policy.check(p.out)
    policy.check(out.with_suffix(".qml"))
    if p.confidence:
        if resolve(p.confidence) == out:
            raise GeoSSLError("The confidence raster and the classified raster are the same file.",
                              "give the confidence raster its own name.")
        policy.check(p.confidence)
    if p.vector:
        from ..vectorize import check_vector_output

        vector = policy.check(check_vector_output(p.vector, out))
        policy.check(vector.with_suffix(".qml"))
    info = None if later(p.raster) else raster_info(p.raster)
    if info is not None and p.extent and extent_window(info, p.extent, p.extent_crs) is None:
        raise GeoSSLError(f"The extent does not overlap '{Path(p.raster).name}'.",
                          "choose an extent over the raster, or none for the whole raster.")
    tile = p.tile
    if not later(p.model):
        ck = load_checkpoint(p.model, "segmentation")
        tile = tile or int(ck.get("tile", 256))
        if info is not None and info.count != int(ck["in_channels"]):
            raise GeoSSLError(
                f"The model expects {ck['in_channels']} bands but '{Path(p.raster).name}' has {info.count}.",
                "predict on a raster with the same bands as the training rasters.")
    if tile and p.overlap is not None and p.overlap >= tile:
        raise GeoSSLError(f"Overlap {p.overlap} must be smaller than the tile ({tile}).", "lower the overlap.")


def _check_evaluate(p: Any, policy: OutputPolicy, later: Any) -> None:
    import numpy as np

    from ..labels import load_label_polygons, read_vector
    from ..predict import read_class_table

    if p.out:
        policy.check(p.out)
    table = pred = None
    if not later(p.prediction):
        pred = raster_info(p.prediction)
        table = read_class_table(p.prediction)
        if table is None:
            raise GeoSSLError(f"'{Path(p.prediction).name}' carries no GeoSSL class table.",
                              "evaluate a map written by `geossl predict`.")
    if p.reference and not later(p.reference):
        ref = raster_info(p.reference)
        if pred is not None and ((ref.width, ref.height) != (pred.width, pred.height)
                                 or not np.allclose(ref.transform, pred.transform)):
            raise GeoSSLError(
                "The reference raster is not on the prediction's grid (size or transform differ).",
                "resample the reference onto the prediction (gdalwarp -te … -tr …) first.")
    if p.labels:
        if pred is not None:
            load_label_polygons(p.labels, p.class_field, [pred], table=table, layer=p.layer)
        else:
            read_vector(p.labels, p.class_field, p.layer)


def _check_pretrain(p: Any, policy: OutputPolicy, later: Any) -> None:
    policy.check(p.out)
    rasters = [r for r in p.rasters if not later(r)]
    bands = None
    if rasters:
        from ..pretrain import check_rasters, expand_rasters, extent_regions

        infos = check_rasters(expand_rasters(rasters))  # folders of GeoTIFFs allowed, no CRS needed
        bands = infos[0].count
        if p.extent:
            extent_regions(infos, p)
        if (p.view_bands or p.pair) and len(rasters) == len(p.rasters) and not any(later(r) for r in p.pair or []):
            from ..pretrain import check_views

            _pairs, views = check_views(p, infos)  # band numbers in range, one pair per raster on the same ground
            bands = views.channels if views else bands
    if (p.init and not later(p.init)) or p.encoder_weights:
        from ..weights import encoder_start

        encoder_start(p.init, p.encoder_weights, p.encoder).check(p.encoder, bands)


def _check_export(p: Any, policy: OutputPolicy, later: Any) -> None:
    policy.check(p.out)
    if not later(p.model):
        from ..checkpoint import load_checkpoint

        load_checkpoint(p.model, "segmentation")


_CHECKERS = {"finetune": _check_finetune, "predict": _check_predict, "evaluate": _check_evaluate,
             "pretrain": _check_pretrain, "export": _check_export, "suggest": _check_suggest}
