"""``geossl``: every step of GeoSSL from a terminal. A thin adapter: flags → job parameters → pipeline.

Progress goes to stderr (bars with ETA, or JSON lines with ``--json``); the result goes to stdout
(a short summary, or one JSON object with ``--json``). User mistakes exit with status 2 and a
message saying what is wrong and how to fix it, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from . import __version__
from .errors import GeoSSLError
from .methods import method_names
from .progress import JsonLinesReporter, TqdmReporter
from .schemas import (
    DEFAULT_FINETUNE_MINUTES,
    ENCODERS,
    ORT_MIN_PIXELS,
    PREDICT_BATCH_HELP,
    PREDICT_OVERLAP,
    PREDICT_TILE_HELP,
    FinetuneParams,
    PredictParams,
)

EXIT_USER_ERROR = 2
WEIGHT_FILES = ("a torchvision/timm/torchgeo ResNet state dict (.pth/.pt/.ckpt/.safetensors, e.g. SSL4EO-S12 "
                "weights; the first convolution is adapted to the raster's bands)")
IMAGENET_HELP = ("start the encoder from ImageNet weights already in the local torch/Hugging Face cache "
                 "(never downloaded; the error names the file to fetch)")


def _colours(items: Sequence[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, colour = item.partition("=")
        if not sep:
            raise GeoSSLError(f"--colour '{item}' is not NAME=#rrggbb.", "write e.g. --colour water=#1f78b4.")
        out[name] = colour
    return out


def _method_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, true, null), else text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GeoSSLError(f"--method-option '{item}' is not KEY=VALUE.", "write e.g. --method-option temperature=0.2.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _pretrain(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .pretrain import run_pretrain
    from .schemas import PretrainParams

    params = PretrainParams(
        rasters=args.raster, out=args.out, method=args.method, method_options=_method_options(args.method_option),
        encoder=args.encoder, init=args.init, encoder_weights=args.encoder_weights, tile=args.tile, batch=args.batch,
        epochs=args.epochs, steps=args.steps,
        steps_per_epoch=args.steps_per_epoch, minutes=args.minutes, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, seed=args.seed, workers=args.workers,
        device=args.device, amp=not args.no_amp, checkpoint_every=args.checkpoint_every,
        **({} if args.checkpoint_minutes is None else {"checkpoint_minutes": args.checkpoint_minutes or None}),
        snapshot_steps=args.snapshot_steps, snapshot_minutes=args.snapshot_minutes,
        resume=args.resume, extent=args.extent, extent_crs=args.extent_crs, view_bands=args.view_bands,
        pair=args.pair,
    )
    return run_pretrain(params, progress)


# Finetune/predict flags → schema fields. Only the flags given are passed on, so every default is the
# schema's (the one the API and the QGIS panel get too); flags whose field name differs are mapped here.
FINETUNE_FLAGS = {"raster": "rasters", "labels": "labels", "class_field": "class_field", "layer": "layer",
                  "out": "out", "encoder": "encoder", "init": "init", "init_aspp": "init_aspp",
                  "init_model": "init_model", "encoder_weights": "encoder_weights", "epochs": "epochs",
                  "steps": "steps", "minutes": "minutes", "max_steps": "max_steps",
                  "steps_per_epoch": "steps_per_epoch", "tile": "tile", "batch": "batch", "lr": "lr",
                  "val_fraction": "val_fraction", "patience": "patience", "seed": "seed", "workers": "workers",
                  "device": "device", "resume": "resume"}
PREDICT_FLAGS = {"model": "model", "raster": "raster", "out": "out", "confidence": "confidence", "tile": "tile",
                 "overlap": "overlap", "batch": "batch", "device": "device", "tta": "tta", "cog": "cog", "engine": "engine", "extent": "extent",
                 "forest_weight": "forest_weight", "smooth": "smooth", "extent_crs": "extent_crs", "vector": "vector", "min_area": "min_area", "simplify": "simplify"}


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    """The schema fields of the flags the user gave (argparse leaves the others None)."""
    values = {field: getattr(args, dest) for dest, field in flags.items() if getattr(args, dest) is not None}
    if args.no_amp:
        values["amp"] = False
    return values


def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    """A validator for one field with its constraints (``ge``, ``lt``…), not only its type."""
    info = model.model_fields[name]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def _recipe(items: Sequence[str] | None, given: dict[str, Any]) -> dict[str, Any]:
    """``--recipe KEY=VALUE`` pairs as FinetuneParams fields, each parsed to its field's type.

    The value is read as JSON first (numbers, true/false, null, lists, objects), else as text, so
    ``ema=0.9``, ``forest=true``, ``forest_texture=[5,11]`` and ``encoder=resnet34`` all mean what they say.
    """
    known = sorted(FinetuneParams.model_fields)
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise GeoSSLError(f"--recipe '{item}' is not KEY=VALUE.", "write e.g. --recipe ema=0.999.")
        if key not in FinetuneParams.model_fields:
            raise GeoSSLError(f"--recipe: unknown key '{key}'; known: {', '.join(known)}.")
        if key in given or key in out:
            raise GeoSSLError(f"--recipe: '{key}' is given twice.", "give each setting once.")
        adapter = _field_adapter(FinetuneParams, key)
        try:
            out[key] = adapter.validate_json(text)
        except ValidationError:
            try:
                out[key] = adapter.validate_python(text)
            except ValidationError as exc:
                raise GeoSSLError(f"--recipe {key}={text}: {exc.errors()[0]['msg']}.") from None
    return out


def finetune_params(args: argparse.Namespace) -> FinetuneParams:
    """The FinetuneParams of parsed ``geossl finetune`` flags: the flags given, the schema's defaults."""
    values = _given(args, FINETUNE_FLAGS)
    colours = _colours(args.colour)
    if colours:
        values["colours"] = colours
    return FinetuneParams(**values, **_recipe(args.recipe, values))


def _finetune(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .finetune import run_finetune

    return run_finetune(finetune_params(args), progress)


def _predict(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .predict import run_predict

    return run_predict(PredictParams(**_given(args, PREDICT_FLAGS)), progress)


def _export(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .export import run_export
    from .schemas import ExportParams

    params = ExportParams(model=args.model, out=args.onnx, tile=args.tile, opset=args.opset, overlap=args.overlap)
    return run_export(params, progress)


def _suggest(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .schemas import SuggestParams
    from .suggest_run import run_suggest

    params = SuggestParams(
        model=args.model, raster=args.raster, labels=args.labels, class_field=args.class_field, layer=args.layer,
        out=args.out, k=args.k, window=args.window, spacing=args.spacing, measure=args.measure, score=args.score,
        class_decay=args.class_decay, tile=args.tile, batch=args.batch, device=args.device, amp=not args.no_amp,
    )
    return run_suggest(params, progress)


def _evaluate(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .evaluate import run_evaluate
    from .schemas import EvaluateParams

    params = EvaluateParams(
        prediction=args.prediction, reference=args.reference, labels=args.labels,
        class_field=args.class_field, layer=args.layer, out=args.out,
    )
    return run_evaluate(params)


def _info(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .info import describe

    return describe(model=args.model, raster=args.raster)


def _summary(command: str, result: dict[str, Any]) -> str:
    """A few human lines per command (``--json`` gives everything)."""
    lines: list[str] = []
    for w in result.get("warnings") or []:
        lines.append(f"warning: {w}")
    if command == "pretrain":
        lines.append(f"Pretrained encoder written to {result['model']} ({result['method']}, {result['steps']} steps, "
                     f"{result['seconds']} s, {result['device']}"
                     + (f", {result['world_size']} processes" if result["world_size"] > 1 else "") + ").")
        if result.get("final_loss") is not None:
            lines.append(f"Loss {result['first_loss']:.4f} → {result['final_loss']:.4f}; per-step log: {result['log']}")
        plan = result.get("plan") or {}
        if plan.get("step_seconds"):
            lines.append(f"Planned {plan['steps']} steps for {plan['minutes']:g} min ({plan['step_seconds']:.2f} s per "
                         f"step measured); --steps {plan['steps']} reproduces this run.")
        for snap in result.get("snapshots") or []:
            lines.append(f"Snapshot after step {snap['step']} ({snap['train_seconds']:.0f} s of training): {snap['path']}")
        lines.append(f"Fine-tune from it: geossl finetune --init {result['model']} --encoder {result['encoder']} …")
    elif command == "finetune":
        v = result.get("validation")
        lines.append(f"Model written to {result['model']} ({result['steps']} steps, {result['seconds']} s, "
                     f"{result['device']}).")
        plan = result.get("plan") or {}
        if plan.get("step_seconds") and plan.get("budget_seconds"):
            lines.append(f"Planned {plan['steps']} steps for {plan['budget_seconds'] / 60:g} min "
                         f"({plan['step_seconds']:.2f} s per step measured); --steps {plan['steps']} reproduces "
                         "this run.")
        if v:
            lines.append(f"Validation (held-out polygons, best epoch {result['best_epoch']}): "
                         f"OA {v['overall_accuracy']:.3f}, Kappa {v['kappa']:.3f}, mIoU {v['miou']:.3f}")
    elif command == "predict":
        lines.append(f"Classes: {result['classes_raster']}")
        if result.get("confidence_raster"):
            lines.append(f"Confidence: {result['confidence_raster']}")
        if result.get("vector"):
            lines.append(f"Polygons: {result['vector']} ({result['polygons']} polygons)")
        lines.append(f"QGIS style: {result['style']} ({result['seconds']} s, {result['device']})")
    elif command == "export":
        lines.append(f"ONNX model written to {result['onnx']} (input {result['input_shape']}, opset "
                     f"{result['opset']}; onnxruntime vs torch max |Δp| {result['max_abs_diff']:.1e}).")
        lines.append("Load it in Deepness (Segmentor); its metadata set the tile size, bands, normalisation "
                     "and class names.")
    elif command == "suggest":
        for it in result["items"]:
            lines.append(f"{it['rank']:>3}. {it['reason']} at x {it['centre'][0]:.1f}, y {it['centre'][1]:.1f}")
        lines.append(f"{result['count']} suggestions written to {result['suggestions']} (layer '{result['layer']}').")
    elif command == "evaluate":
        lines.append(f"OA {result['overall_accuracy']:.4f}  Kappa {result['kappa']:.4f}  "
                     f"mIoU {result['miou']:.4f}  ({result['pixels']} pixels)")
        for name, c in result["per_class"].items():
            lines.append(f"  {name:>16}: F1 {c['f1']:.3f}  IoU {c['iou']:.3f}  support {c['support']}")
        if result.get("metrics_file"):
            lines.append(f"Metrics written to {result['metrics_file']}")
    elif command == "serve":
        lines.append("Service stopped.")
    else:
        lines.append(json.dumps(result, indent=2))
    return "\n".join(lines)


def _default(name: str, model: type[BaseModel] = FinetuneParams) -> str:
    """``(default: X)`` read from the schema, so the help never quotes a default the job does not get."""
    value = model.model_fields[name].default
    return f"(default: {value:g})" if isinstance(value, float) else f"(default: {value})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geossl",
        description="GeoSSL: map land cover from a few polygons. Fine-tune a segmentation model on your "
                    "rasters, classify whole rasters, and measure accuracy.",
    )
    p.add_argument("--version", action="version", version=f"geossl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="machine-readable output: progress as JSON "
                        "lines on stderr, the result as one JSON object on stdout")

    def extent(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--extent", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                        help=f"only {what} inside this rectangle (default: the whole raster)")
        sp.add_argument("--extent-crs", metavar="CRS", help="CRS of --extent, e.g. EPSG:4326 (default: the raster's)")

    def device(sp: argparse.ArgumentParser, default: str | None = "auto") -> None:
        """``default=None`` for commands built from the schema (its default "auto" applies)."""
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default=default,
                        help="where to compute (default: the GPU when there is one)")
        sp.add_argument("--no-amp", action="store_true", help="disable mixed precision on the GPU")

    pt = sub.add_parser("pretrain", help="self-supervised pretraining on unlabeled rasters",
                        description="Pretrain DeepLabV3+ on your own unlabeled rasters (no labels needed), then "
                                    "fine-tune from it with `geossl finetune --init`. Runs under torchrun for "
                                    "several GPUs/processes (--batch is then the batch over all processes).")
    pt.add_argument("--raster", action="append", required=True, metavar="R.tif|DIR",
                    help="unlabeled raster, or a folder of GeoTIFFs (repeat; all with the same bands)")
    pt.add_argument("--out", required=True, metavar="ENC.pt", help="pretrained checkpoint to write "
                    "(also ENC.pt.state.pt to resume, ENC.pt.log.jsonl with the loss per step)")
    pt.add_argument("--method", choices=method_names(), default=method_names()[0],
                    help=f"self-supervised method (default: {method_names()[0]})")
    pt.add_argument("--method-option", action="append", metavar="KEY=VALUE",
                    help="method hyper-parameter, e.g. temperature=0.2 (repeatable)")
    pt.add_argument("--encoder", choices=ENCODERS, default="resnet18", help="backbone (default: resnet18)")
    start = pt.add_mutually_exclusive_group()
    start.add_argument("--init", metavar="FILE", help="continue from these encoder weights: a `geossl pretrain` or "
                       "`geossl finetune` model's encoder, or " + WEIGHT_FILES)
    start.add_argument("--encoder-weights", choices=["imagenet"], help=IMAGENET_HELP)
    budget = pt.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="epochs of --steps-per-epoch steps (default 20)")
    budget.add_argument("--steps", type=int, help="total training steps instead of epochs")
    budget.add_argument("--minutes", type=float, metavar="M",
                        help="wall-time budget instead: a few steps are measured (and discarded), then the steps "
                             "that fit in M minutes are fixed and recorded (--steps N reproduces the run)")
    pt.add_argument("--steps-per-epoch", type=int, default=500, help="steps per epoch (default 500)")
    pt.add_argument("--tile", type=int, default=256,
                    help="window size in pixels, multiple of 16; views are 7/8 of it (default 256)")
    pt.add_argument("--batch", type=int, default=32, help="windows per step (default 32)")
    pt.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    pt.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                    help="cosine to 0 over the run (default), or constant after a linear warm-up: every "
                         "intermediate snapshot is then what a run of that length would have made")
    pt.add_argument("--warmup-steps", type=int, metavar="N",
                    help="constant schedule: warm-up steps (default: 2%% of the run, at most 100)")
    pt.add_argument("--weight-decay", type=float, default=1e-5, help="Adam weight decay (default 1e-5)")
    pt.add_argument("--seed", type=int, default=0, help="random seed (saved with the checkpoint)")
    pt.add_argument("--workers", type=int, default=0, help="parallel data-loading processes")
    pt.add_argument("--checkpoint-every", type=int, default=500, metavar="N",
                    help="write the resume state every N steps (default 500)")
    pt.add_argument("--checkpoint-minutes", type=float, metavar="M",
                    help="also write it every M minutes, so a run killed at any time loses at most M minutes "
                         "(default 10; 0: by steps only)")
    pt.add_argument("--snapshot-steps", type=int, nargs="+", metavar="N",
                    help="also write a complete pretrained checkpoint ENC.stepN.pt after each step N "
                         "(fine-tune from any of them; with --lr-schedule constant each is an N-step run)")
    pt.add_argument("--snapshot-minutes", type=float, nargs="+", metavar="M",
                    help="with --minutes: snapshots after the steps that M minutes would have planned")
    pt.add_argument("--resume", action="store_true", help="continue from ENC.pt.state.pt, exactly where it stopped")
    pt.add_argument("--view-bands", nargs="+", metavar="BANDS",
                    help="byol/moco (RS-BYOL): the two views from two equal band groups, e.g. --view-bands "
                         "'1,2,3,7' '8,9,10,11' (1-based), or K random bands per view: --view-bands random:4")
    pt.add_argument("--pair", action="append", metavar="B.tif",
                    help="byol/moco (RS-BYOL): co-registered raster of the same place (e.g. Sentinel-1), one per "
                         "--raster in the same order; view 2 is read from it over the same ground")
    extent(pt, "sample training windows")
    device(pt)
    common(pt)
    pt.set_defaults(run=_pretrain)

    ft = sub.add_parser("finetune", help="train a segmentation model from polygons",
                        description="Train DeepLabV3+ from a few polygons. Pixels outside the polygons are "
                                    "unlabeled (ignored), not background.")
    ft.add_argument("--raster", action="append", required=True, metavar="R.tif",
                    help="training raster (repeat for several rasters with the same bands)")
    ft.add_argument("--labels", required=True, metavar="L.gpkg", help="polygon layer (GeoPackage, Shapefile, GeoJSON)")
    ft.add_argument("--class-field", required=True, metavar="F", help="attribute holding each polygon's class")
    ft.add_argument("--layer", help="layer name, for files with several layers")
    ft.add_argument("--out", required=True, metavar="M.pt", help="model file to write")
    ft.add_argument("--encoder", choices=ENCODERS, help=f"backbone (default: "
                    f"{FinetuneParams.model_fields['encoder'].default}, or --init-model's)")
    init = ft.add_mutually_exclusive_group()
    init.add_argument("--init", metavar="FILE", help="start from a `geossl pretrain` checkpoint, or " + WEIGHT_FILES)
    init.add_argument("--encoder-weights", choices=["imagenet"], help=IMAGENET_HELP)
    init.add_argument("--init-model", metavar="M.pt",
                      help="warm start: continue training a fine-tuned model (all weights; same classes), "
                           "e.g. after adding polygons where `geossl suggest` pointed")
    ft.add_argument("--init-aspp", action="store_true", default=None, help="also load the pretrained ASPP module")
    budget = ft.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, metavar="M",
                        help="wall-time budget: a few steps are measured, then the steps that fit in M minutes "
                             "are fixed and recorded in the model (--steps N reproduces the run; default: "
                             f"{DEFAULT_FINETUNE_MINUTES:g} min when neither --steps nor --epochs is given)")
    budget.add_argument("--steps", type=int, help="total training steps instead of a time budget")
    budget.add_argument("--epochs", type=int, help="training epochs of --steps-per-epoch steps instead of a time "
                        "budget")
    ft.add_argument("--max-steps", type=int, metavar="N",
                    help="with a time budget: train at most N steps however many would fit")
    ft.add_argument("--steps-per-epoch", type=int,
                    help="steps between validations " + _default("steps_per_epoch"))
    ft.add_argument("--tile", type=int,
                    help="training window size in pixels, multiple of 16 " + _default("tile"))
    ft.add_argument("--batch", type=int, help="windows per step " + _default("batch"))
    ft.add_argument("--lr", type=float, help="learning rate " + _default("lr"))
    ft.add_argument("--val-fraction", type=float,
                    help="share of each class's polygons held out for validation " + _default("val_fraction"))
    ft.add_argument("--patience", type=int,
                    help="epochs without improvement before stopping " + _default("patience"))
    ft.add_argument("--seed", type=int, help="random seed, saved with the model " + _default("seed"))
    ft.add_argument("--workers", type=int, help="parallel data-loading processes " + _default("workers"))
    ft.add_argument("--colour", action="append", metavar="NAME=#rrggbb", help="class colour (repeatable)")
    ft.add_argument("--resume", action="store_true", default=None,
                    help="continue an interrupted run from M.pt.state.pt (saved after every epoch)")
    ft.add_argument("--recipe", action="append", metavar="KEY=VALUE",
                    help="any other fine-tuning setting by its API name, e.g. --recipe ema=0.999 or --recipe "
                         "class_balance=0.5 (repeatable; for experiments: the defaults are the tuned recipe)")
    device(ft, default=None)
    common(ft)
    ft.set_defaults(run=_finetune)

    pr = sub.add_parser("predict", help="classify a whole raster with a model",
                        description="Classify a raster tile by tile (overlapping tiles blended, memory bounded).")
    pr.add_argument("--model", required=True, metavar="M.pt")
    pr.add_argument("--raster", required=True, metavar="R.tif")
    pr.add_argument("--out", required=True, metavar="CLASSES.tif", help="classified GeoTIFF to write")
    pr.add_argument("--confidence", metavar="CONF.tif", help="also write the confidence (max probability)")
    pr.add_argument("--tile", type=int, help=f"tile size (default: {PREDICT_TILE_HELP})")
    pr.add_argument("--overlap", type=int, help=f"tile overlap in pixels (default: {PREDICT_OVERLAP})")
    pr.add_argument("--batch", type=int, help=f"tiles per forward pass (default: {PREDICT_BATCH_HELP})")
    pr.add_argument("--tta", action="store_true", default=None,
                    help="smoother map: average the model over the 8 flips/rotations of every tile (8× the "
                         "compute; default: " + ("on" if PredictParams.model_fields["tta"].default else "off") + ")")
    pr.add_argument("--engine", choices=["auto", "torch", "onnxruntime"],
                    help=f"auto (default): ONNX Runtime on the CPU for rasters of ≥ {ORT_MIN_PIXELS // 10**6} Mpx or "
                         "a model already exported at this tile (faster there), torch otherwise")
    pr.add_argument("--cog", action="store_true", default=None,
                    help="write Cloud Optimized GeoTIFFs: overviews inside, fast to display at any zoom, readable "
                         "over HTTP (default: plain tiled GeoTIFFs)")
    pr.add_argument("--forest-weight", type=float, metavar="W", help="share of the model's per-pixel forest in "
                    "the map, 0–1 (default: the share chosen on the validation polygons; 0: the network alone)")
    pr.add_argument("--smooth", type=int, metavar="PX", help="average the class probabilities over a PX×PX window "
                    "before choosing the class, PX odd (default: the window chosen on the validation polygons; "
                    "1: no smoothing)")
    pr.add_argument("--vector", metavar="OUT.gpkg", help="also write the classes as polygons (class id, name, "
                    "mean confidence), styled by OUT.qml")
    pr.add_argument("--min-area", type=float, metavar="A", help="with --vector: merge regions smaller than A "
                    "map units² (e.g. m²) into their neighbours first")
    pr.add_argument("--simplify", type=float, metavar="T", help="with --vector: simplification tolerance in map "
                    "units (shared edges stay shared)")
    extent(pr, "classify")
    device(pr, default=None)
    common(pr)
    pr.set_defaults(run=_predict)

    ex = sub.add_parser("export", help="a model as ONNX for the Deepness QGIS plugin",
                        description="Write a fine-tuned model as an ONNX graph that Deepness loads as a Segmentor: "
                                    "fixed tile size, softmax output, band normalisation and class names in its "
                                    "metadata (checked against torch on one tile).")
    ex.add_argument("--model", required=True, metavar="M.pt", help="fine-tuned model")
    ex.add_argument("--onnx", required=True, metavar="M.onnx", help="ONNX file to write")
    ex.add_argument("--tile", type=int, help="fixed input size in pixels (default: the model's training tile)")
    ex.add_argument("--opset", type=int, default=18, help="ONNX opset, 18-21 (default 18)")
    ex.add_argument("--overlap", type=int, default=25, help="tile overlap Deepness proposes, in %% (default 25)")
    common(ex)
    ex.set_defaults(run=_export)

    sg = sub.add_parser("suggest", help="where to label next: the places the model is least sure about",
                        description="Propose K square windows to draw new polygons in: where the model's top two "
                                    "classes are closest (or its entropy highest), spread apart and across "
                                    "predicted classes, never on nodata or existing polygons. Then continue "
                                    "training with `geossl finetune --init-model M.pt`.")
    sg.add_argument("--model", required=True, metavar="M.pt", help="fine-tuned model")
    sg.add_argument("--raster", required=True, metavar="R.tif")
    sg.add_argument("--labels", metavar="L.gpkg", help="existing polygons (their ground is never suggested)")
    sg.add_argument("--class-field", metavar="F", help="class attribute of --labels")
    sg.add_argument("--layer", help="layer name of --labels")
    sg.add_argument("-k", type=int, default=10, help="number of suggestions (default 10)")
    sg.add_argument("--out", required=True, metavar="S.gpkg", help="GeoPackage to write (layer 'label here next')")
    sg.add_argument("--window", type=int, default=64, help="side of a suggested square in pixels, multiple of 4 "
                    "(default 64)")
    sg.add_argument("--spacing", type=int, help="minimum distance between suggestions in pixels "
                    "(default: twice the window)")
    sg.add_argument("--measure", choices=["margin", "entropy"], default="margin",
                    help="uncertainty: 1 - (p1 - p2), or normalised entropy (default margin)")
    sg.add_argument("--score", choices=["drawable", "uncertainty"], default="drawable",
                    help="rank by the uncertainty inside the class polygon a mapper can draw there (default "
                    "drawable), or by the square's mean uncertainty (favours class edges)")
    sg.add_argument("--class-decay", type=float, default=0.5,
                    help="score factor per earlier pick of the same predicted class (1: no class diversity)")
    sg.add_argument("--tile", type=int, help="tile size (default: the model's training tile)")
    sg.add_argument("--batch", type=int, default=8, help="tiles per forward pass")
    device(sg)
    common(sg)
    sg.set_defaults(run=_suggest)

    ev = sub.add_parser("evaluate", help="accuracy of a classified map (OA, Kappa, F1, mIoU)",
                        description="Compare a classified map with a reference raster or reference polygons.")
    ev.add_argument("--prediction", required=True, metavar="CLASSES.tif")
    ref = ev.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", metavar="REF.tif", help="reference raster on the same grid")
    ref.add_argument("--labels", metavar="L.gpkg", help="reference polygons")
    ev.add_argument("--class-field", metavar="F", help="class attribute of --labels")
    ev.add_argument("--layer", help="layer name of --labels")
    ev.add_argument("--out", metavar="METRICS.json", help="write the metrics as JSON")
    common(ev)
    ev.set_defaults(run=_evaluate)

    inf = sub.add_parser("info", help="describe the installation, a model file or a raster")
    inf.add_argument("--model", metavar="M.pt")
    inf.add_argument("--raster", metavar="R.tif")
    common(inf)
    inf.set_defaults(run=_info)

    from .service import add_serve_parser

    add_serve_parser(sub)
    return p


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "input"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where.replace('_', '-')}: {msg}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter: Callable = JsonLinesReporter() if args.json else TqdmReporter()
    try:
        result = args.run(args, reporter)
    except GeoSSLError as exc:
        return _fail(args, str(exc))
    except ValidationError as exc:
        return _fail(args, f"invalid options: {_validation_message(exc)}")
    except KeyboardInterrupt:
        kept = " (the last resume state is kept: repeat the command with --resume)" if args.command == "pretrain" else ""
        return _fail(args, f"interrupted; no output was written{kept}.", code=130)
    finally:
        if isinstance(reporter, TqdmReporter):
            reporter.close()
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for the whole job
    try:
        print(json.dumps(result, indent=None, default=str) if args.json else _summary(args.command, result))
        sys.stdout.flush()
    except BrokenPipeError:  # nobody reads any more (`| head`, or QGIS that started us has gone)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _fail(args: argparse.Namespace, message: str, code: int = EXIT_USER_ERROR) -> int:
    if args.json:
        print(json.dumps({"error": message}))
    print(f"geossl {args.command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
