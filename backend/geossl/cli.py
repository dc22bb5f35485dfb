"""``geossl``: every step of GeoSSL from a terminal. A thin adapter: flags → job parameters → pipeline.

Progress goes to stderr (bars with ETA, or JSON lines with ``--json``); the result goes to stdout
(a short summary, or one JSON object with ``--json``). User mistakes exit with status 2 and a
message saying what is wrong and how to fix it, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from . import __version__
from .errors import GeoSSLError
from .models import ENCODERS
from .progress import JsonLinesReporter, TqdmReporter

EXIT_USER_ERROR = 2


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


def _finetune(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .finetune import run_finetune
    from .schemas import FinetuneParams

    params = FinetuneParams(
        rasters=args.raster, labels=args.labels, class_field=args.class_field, layer=args.layer, out=args.out,
        encoder=args.encoder, init=args.init, init_aspp=args.init_aspp, epochs=args.epochs, steps=args.steps,
        steps_per_epoch=args.steps_per_epoch, tile=args.tile, batch=args.batch, lr=args.lr,
        val_fraction=args.val_fraction, patience=args.patience, seed=args.seed, workers=args.workers,
        device=args.device, amp=not args.no_amp, colours=_colours(args.colour),
    )
    return run_finetune(params, progress)


def _predict(args: argparse.Namespace, progress) -> dict[str, Any]:
    from .predict import run_predict
    from .schemas import PredictParams

    params = PredictParams(
        model=args.model, raster=args.raster, out=args.out, confidence=args.confidence, tile=args.tile,
        overlap=args.overlap, batch=args.batch, device=args.device, amp=not args.no_amp,
    )
    return run_predict(params, progress)


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
    if command == "finetune":
        v = result.get("validation")
        lines.append(f"Model written to {result['model']} ({result['steps']} steps, {result['seconds']} s, "
                     f"{result['device']}).")
        if v:
            lines.append(f"Validation (held-out polygons, best epoch {result['best_epoch']}): "
                         f"OA {v['overall_accuracy']:.3f}, Kappa {v['kappa']:.3f}, mIoU {v['miou']:.3f}")
    elif command == "predict":
        lines.append(f"Classes: {result['classes_raster']}")
        if result.get("confidence_raster"):
            lines.append(f"Confidence: {result['confidence_raster']}")
        lines.append(f"QGIS style: {result['style']} ({result['seconds']} s, {result['device']})")
    elif command == "evaluate":
        lines.append(f"OA {result['overall_accuracy']:.4f}  Kappa {result['kappa']:.4f}  "
                     f"mIoU {result['miou']:.4f}  ({result['pixels']} pixels)")
        for name, c in result["per_class"].items():
            lines.append(f"  {name:>16}: F1 {c['f1']:.3f}  IoU {c['iou']:.3f}  support {c['support']}")
        if result.get("metrics_file"):
            lines.append(f"Metrics written to {result['metrics_file']}")
    else:
        lines.append(json.dumps(result, indent=2))
    return "\n".join(lines)


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

    def device(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to compute (default: the GPU when there is one)")
        sp.add_argument("--no-amp", action="store_true", help="disable mixed precision on the GPU")

    ft = sub.add_parser("finetune", help="train a segmentation model from polygons",
                        description="Train DeepLabV3+ from a few polygons. Pixels outside the polygons are "
                                    "unlabeled (ignored), not background.")
    ft.add_argument("--raster", action="append", required=True, metavar="R.tif",
                    help="training raster (repeat for several rasters with the same bands)")
    ft.add_argument("--labels", required=True, metavar="L.gpkg", help="polygon layer (GeoPackage, Shapefile, GeoJSON)")
    ft.add_argument("--class-field", required=True, metavar="F", help="attribute holding each polygon's class")
    ft.add_argument("--layer", help="layer name, for files with several layers")
    ft.add_argument("--out", required=True, metavar="M.pt", help="model file to write")
    ft.add_argument("--encoder", choices=ENCODERS, default="resnet18", help="backbone (default: resnet18)")
    ft.add_argument("--init", metavar="PRETRAINED.pt", help="start from a `geossl pretrain` encoder")
    ft.add_argument("--init-aspp", action="store_true", help="also load the pretrained ASPP module")
    budget = ft.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="training epochs (default 20)")
    budget.add_argument("--steps", type=int, help="total training steps instead of epochs")
    ft.add_argument("--steps-per-epoch", type=int, default=50, help="steps between validations (default 50)")
    ft.add_argument("--tile", type=int, default=256, help="training window size in pixels (multiple of 16)")
    ft.add_argument("--batch", type=int, default=8, help="windows per step (default 8)")
    ft.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    ft.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of each class's polygons held out for validation (default 0.2)")
    ft.add_argument("--patience", type=int, default=5, help="epochs without improvement before stopping")
    ft.add_argument("--seed", type=int, default=0, help="random seed (saved with the model)")
    ft.add_argument("--workers", type=int, default=0, help="parallel data-loading processes")
    ft.add_argument("--colour", action="append", metavar="NAME=#rrggbb", help="class colour (repeatable)")
    device(ft)
    common(ft)
    ft.set_defaults(run=_finetune)

    pr = sub.add_parser("predict", help="classify a whole raster with a model",
                        description="Classify a raster tile by tile (overlapping tiles blended, memory bounded).")
    pr.add_argument("--model", required=True, metavar="M.pt")
    pr.add_argument("--raster", required=True, metavar="R.tif")
    pr.add_argument("--out", required=True, metavar="CLASSES.tif", help="classified GeoTIFF to write")
    pr.add_argument("--confidence", metavar="CONF.tif", help="also write the confidence (max probability)")
    pr.add_argument("--tile", type=int, help="tile size (default: the model's training tile)")
    pr.add_argument("--overlap", type=int, help="tile overlap in pixels (default: a quarter of the tile)")
    pr.add_argument("--batch", type=int, default=8, help="tiles per forward pass")
    device(pr)
    common(pr)
    pr.set_defaults(run=_predict)

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
        return _fail(args, "interrupted; no output was written.", code=130)
    finally:
        if isinstance(reporter, TqdmReporter):
            reporter.close()
    if args.json:
        print(json.dumps(result, indent=None, default=str))
    else:
        print(_summary(args.command, result))
    return 0


def _fail(args: argparse.Namespace, message: str, code: int = EXIT_USER_ERROR) -> int:
    if args.json:
        print(json.dumps({"error": message}))
    print(f"geossl {args.command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
