"""Where to label next on the Dubai tiles: K suggested windows per round vs K random ones, same budget.

A simulated mapper starts from the few-label polygons of ``fewlabel.py`` (squares inside single-class
areas, ~``--label-share`` of the labelled pixels) and a model fine-tuned on them. Each round they get K
windows — from ``geossl suggest`` (pooled over the images, class diversity across the pool; ranked by
``--score``) or placed at random on unlabelled ground — and label each one from the dense mask:

- ``--mapper polygon`` (default): they trace the window's majority class as it is inside the square,
  one polygon per 4-connected region of that class, every region of at least ``--min-side``² pixels
  (a person digitising a square outlines each patch of the class they see, not specks);
- ``--mapper square``: one rectangle, the largest square of the window's majority class.

A window that yields nothing (no region, or no square of ``--min-side`` pixels) is a wasted
suggestion: the budget is K windows, not K polygons. Both strategies use the same mapper. The model
then continues training from the previous round (``init_model``, warm start) for ``--round-steps``
steps. Kappa is measured after every round on the labelled pixels the strategy has not labelled.
Both strategies start from the same round-0 model. Results: bench/results/suggest.{md,json}.

    backend/.venv/bin/python tests/bench/bench_suggest.py --seeds 0 1 2 --k 10 --steps 300 --round-steps 100
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from geossl.checkpoint import versions  # noqa: E402
from geossl.finetune import run_finetune  # noqa: E402
from geossl.predict import run_predict  # noqa: E402
from geossl.schemas import FinetuneParams, PredictParams, SuggestParams  # noqa: E402
from geossl.suggest_run import run_suggest  # noqa: E402

from tests.bench import dubai  # noqa: E402
from tests.bench.fewlabel import evaluate  # noqa: E402
from tests.data import SHARED_DATA  # noqa: E402

STRATEGIES = ("suggest", "random")
MAPPERS = {"polygon": "the majority class's regions traced in each window from the dense mask",
           "square": "one square of the majority class per window from the dense mask"}


def largest_square(ref: np.ndarray, used: np.ndarray, r0: int, c0: int, size: int,
                   min_side: int) -> tuple[int, int, int, int] | None:
    """(row, col, side, value): the largest square of the window's majority class, all of that class and
    unused, inside the window at (r0, c0); None when there is none of ``min_side`` pixels."""
    win = ref[r0:r0 + size, c0:c0 + size]
    free = ~used[r0:r0 + size, c0:c0 + size]
    values = win[(win > 0) & free]
    if values.size == 0:
        return None
    value = int(np.bincount(values).argmax())
    ok = ((win == value) & free).astype(np.int64)
    sat = np.zeros((ok.shape[0] + 1, ok.shape[1] + 1), np.int64)
    sat[1:, 1:] = ok.cumsum(0).cumsum(1)
    side = min(ok.shape)
    while side >= min_side:
        full = sat[side:, side:] - sat[:-side, side:] - sat[side:, :-side] + sat[:-side, :-side] == side * side
        hits = np.argwhere(full)
        if hits.size:
            centre = (np.array(ok.shape) - side) / 2  # the square nearest the window's centre
            r, c = hits[np.argmin(np.abs(hits - centre).sum(1))]
            return r0 + int(r), c0 + int(c), side, value
        side -= max(1, side // 8)
    return None


def majority_region(ref: np.ndarray, used: np.ndarray, r0: int, c0: int, size: int,
                    min_pixels: int) -> tuple[np.ndarray, int] | None:
    """(mask, value): what the polygon mapper traces in the window at (r0, c0) — the unused pixels of
    the window's majority class, kept where their 4-connected region inside the window has at least
    ``min_pixels`` pixels; ``mask`` is window-sized. None when nothing is left to trace."""
    from scipy import ndimage

    win = ref[r0:r0 + size, c0:c0 + size]
    free = ~used[r0:r0 + size, c0:c0 + size]
    values = win[(win > 0) & free]
    if values.size == 0:
        return None
    value = int(np.bincount(values).argmax())
    regions, _ = ndimage.label((win == value) & free)  # default structure: 4-connectivity
    keep = np.bincount(regions.ravel()) >= min_pixels
    keep[0] = False  # background
    mask = keep[regions]
    return (mask, value) if mask.any() else None


def region_polygons(mask: np.ndarray, r0: int, c0: int, origin: tuple[float, float],
                    pixel: float = dubai.PIXEL) -> list:
    """One shapely polygon (holes included) per 4-connected region of ``mask``, on pixel edges, so that
    rasterising them (pixel centres, as fine-tuning does) gives back exactly the mask's pixels."""
    import shapely.geometry
    from rasterio import features
    from rasterio.transform import from_origin

    tf = from_origin(origin[0] + c0 * pixel, origin[1] - r0 * pixel, pixel, pixel)
    shapes = features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=tf)
    return [shapely.geometry.shape(g) for g, _ in shapes]


def label_windows(scenes, used, windows, size: int, min_side: int,
                  mapper: str = "polygon") -> tuple[list, list[str], int]:
    """The simulated mapper: per window, the majority class's regions (``polygon``) or its largest
    square (``square``), from the dense mask; marks the labelled pixels used."""
    geoms, names, wasted = [], [], 0
    import shapely

    for k, r0, c0 in windows:
        x0, y0 = scenes[k].origin
        if mapper == "polygon":
            traced = majority_region(scenes[k].reference, used[k], r0, c0, size, min_side * min_side)
            if traced is None:
                wasted += 1
                continue
            mask, value = traced
            new = region_polygons(mask, r0, c0, scenes[k].origin)
            used[k][r0:r0 + size, c0:c0 + size] |= mask
        else:
            sq = largest_square(scenes[k].reference, used[k], r0, c0, size, min_side)
            if sq is None:
                wasted += 1
                continue
            r, c, side, value = sq
            new = [shapely.box(x0 + c * dubai.PIXEL, y0 - (r + side) * dubai.PIXEL, x0 + (c + side) * dubai.PIXEL,
                               y0 - r * dubai.PIXEL)]
            used[k][r:r + side, c:c + side] = True
        geoms += new
        names += [dubai.NAMES[value - 1]] * len(new)
    return geoms, names, wasted


def suggested_windows(scenes, model: Path, gpkg: Path, work: Path, args) -> list[tuple[int, int, int]]:
    """K windows from ``geossl suggest`` on every image, pooled: best first, with the same class decay
    across images as within one."""
    pool = []
    for k, s in enumerate(scenes):
        out = work / f"suggest_{k}.gpkg"
        result = run_suggest(SuggestParams(model=str(model), raster=str(s.image), labels=str(gpkg),
                                           class_field="class", out=str(out), k=args.k, window=args.window,
                                           score=args.score, batch=args.batch))
        klass = "drawable_class" if args.score == "drawable" else "class_1"  # as suggest.score_class
        pool += [(it["score"], it[klass], k, it["row"], it["col"]) for it in result["items"]]
    chosen, eff = [], {i: p[0] for i, p in enumerate(pool)}
    while len(chosen) < args.k and eff:
        i = max(eff, key=eff.get)
        chosen.append(pool[i][2:])
        del eff[i]
        for j in eff:
            if pool[j][1] == pool[i][1]:
                eff[j] *= 0.5
    return chosen


def random_windows(scenes, used, rng: np.random.Generator, args) -> list[tuple[int, int, int]]:
    """K windows at random places on unlabelled ground (no pixel already labelled by a polygon)."""
    out = []
    for _ in range(args.k * 50):
        if len(out) == args.k:
            break
        k = int(rng.integers(len(scenes)))
        h, w = scenes[k].reference.shape
        r, c = int(rng.integers(0, h - args.window + 1)), int(rng.integers(0, w - args.window + 1))
        if not used[k][r:r + args.window, c:c + args.window].any():
            out.append((k, r, c))
    return out


def finetune(scenes, gpkg: Path, out: Path, seed: int, steps: int, args, init_model: Path | None = None) -> float:
    t = time.perf_counter()
    lr = {"lr": args.round_lr} if init_model and args.round_lr else {}
    run_finetune(FinetuneParams(rasters=[str(s.image) for s in scenes], labels=str(gpkg), class_field="class",
                                out=str(out), init_model=str(init_model) if init_model else None, steps=steps,
                                steps_per_epoch=min(args.steps_per_epoch, steps), tile=args.tile, batch=args.batch,
                                seed=seed, patience=100, **lr))
    return time.perf_counter() - t


def kappa(scenes, used, model: Path, work: Path, args) -> dict:
    import rasterio

    preds = []
    for s in scenes:
        out = work / f"pred_{s.image.name}"
        run_predict(PredictParams(model=str(model), raster=str(s.image), out=str(out), batch=args.batch))
        with rasterio.open(out) as src:
            preds.append(src.read(1))
    return evaluate(scenes, used, preds)


def run_seed(scenes, seed: int, work: Path, args) -> dict[str, list[dict]]:
    geoms, names, used0 = dubai.draw_polygons(scenes, seed, args.label_share)
    gpkg0 = dubai.write_gpkg(work / f"labels_{seed}_r0.gpkg", geoms, names)
    model0 = work / f"model_{seed}_r0.pt"
    secs = finetune(scenes, gpkg0, model0, seed, args.steps, args)
    m = kappa(scenes, used0, model0, work, args)
    start = {"round": 0, "kappa": m["kappa"], "oa": m["overall_accuracy"], "miou": m["miou"],
             "polygons": len(geoms), "labelled_pixels": int(sum(u.sum() for u in used0)), "wasted": 0,
             "train_seconds": round(secs, 1)}
    print(f"seed {seed} round 0: kappa {m['kappa']:.3f}", flush=True)
    runs: dict[str, list[dict]] = {}
    for strategy in STRATEGIES:
        rng = np.random.default_rng([seed, 1])
        used = [u.copy() for u in used0]
        g, n, model, gpkg = list(geoms), list(names), model0, gpkg0
        rows = [start]
        for r in range(1, args.rounds + 1):
            t = time.perf_counter()
            windows = (suggested_windows(scenes, model, gpkg, work, args) if strategy == "suggest"
                       else random_windows(scenes, used, rng, args))
            pick_s = time.perf_counter() - t
            new_g, new_n, wasted = label_windows(scenes, used, windows, args.window, args.min_side, args.mapper)
            g, n = g + new_g, n + new_n
            gpkg = dubai.write_gpkg(work / f"labels_{seed}_{strategy}_r{r}.gpkg", g, n)
            nxt = work / f"model_{seed}_{strategy}_r{r}.pt"
            secs = finetune(scenes, gpkg, nxt, seed + r, args.round_steps, args, init_model=model)
            model = nxt
            m = kappa(scenes, used, model, work, args)
            rows.append({"round": r, "kappa": m["kappa"], "oa": m["overall_accuracy"], "miou": m["miou"],
                         "polygons": len(g), "labelled_pixels": int(sum(u.sum() for u in used)),
                         "wasted": wasted, "pick_seconds": round(pick_s, 1), "train_seconds": round(secs, 1)})
            print(f"seed {seed} {strategy} round {r}: kappa {m['kappa']:.3f} (+{len(new_g)} polygons, "
                  f"{wasted} wasted)", flush=True)
        runs[strategy] = rows
    return runs


def summarise(per_seed: list[dict[str, list[dict]]], rounds: int) -> dict:
    table = {}
    for strategy in STRATEGIES:
        table[strategy] = []
        for r in range(rounds + 1):
            k = np.array([s[strategy][r]["kappa"] for s in per_seed]) * 100
            px = np.array([s[strategy][r]["labelled_pixels"] for s in per_seed])
            table[strategy].append({"round": r, "kappa_mean": round(float(k.mean()), 2),
                                    "kappa_std": round(float(k.std()), 2), "labelled_pixels": int(px.mean()),
                                    "wasted": float(np.mean([s[strategy][r]["wasted"] for s in per_seed]))})
    gains = [100 * (s["suggest"][rounds]["kappa"] - s["random"][rounds]["kappa"]) for s in per_seed]
    return {"table": table, "gain_after_last_round": {"mean": round(float(np.mean(gains)), 2),
                                                      "per_seed": [round(g, 2) for g in gains]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "dubai")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=None, help="use only the first N images (quick runs)")
    ap.add_argument("--label-share", type=float, default=0.01, help="initial polygons, as in fewlabel.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10, help="windows per round")
    ap.add_argument("--window", type=int, default=64, help="window side in pixels (multiple of 4)")
    ap.add_argument("--min-side", type=int, default=6, help="smallest square the mapper draws (square), or "
                    "smallest region, as side² pixels (polygon)")
    ap.add_argument("--mapper", choices=["polygon", "square"], default="polygon",
                    help="trace the majority class's regions in each window, or draw its largest square")
    ap.add_argument("--score", choices=["drawable", "uncertainty"],
                    default=SuggestParams.model_fields["score"].default, help="how geossl suggest ranks windows")
    ap.add_argument("--steps", type=int, default=300, help="round-0 fine-tune steps")
    ap.add_argument("--round-steps", type=int, default=100, help="warm-start steps after each round")
    ap.add_argument("--round-lr", type=float, help="learning rate of the warm starts (default: fine-tuning's)")
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--work", type=Path, help="keep intermediate files here")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"no Dubai data at {args.data}")
    work = args.work or Path(tempfile.mkdtemp(prefix="geossl-suggest-"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = dubai.prepare(args.data, work / "scenes", args.images)
    t0 = time.perf_counter()
    per_seed = [run_seed(scenes, seed, work, args) for seed in args.seeds]
    summary = summarise(per_seed, args.rounds)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "versions": versions(), "images": len(scenes), "seeds": args.seeds, "label_share": args.label_share,
            "rounds": args.rounds, "k": args.k, "window": args.window, "min_side": args.min_side,
            "mapper": args.mapper, "score": args.score,
            "finetune": {"steps": args.steps, "round_steps": args.round_steps, "round_lr": args.round_lr,
                         "tile": args.tile, "batch": args.batch, "encoder": "resnet18"},
            "seconds": round(time.perf_counter() - t0, 1),
            "grid": "assumed EPSG:32640, 0.5 m (the tiles carry no georeference)"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suggest.json").write_text(json.dumps({"meta": meta, **summary, "runs": per_seed}, indent=1))
    gain = summary["gain_after_last_round"]["mean"]
    lines = ["# Where to label next — Dubai aerial tiles", "",
             f"{meta['date']}; {len(scenes)} images; {len(args.seeds)} seed(s); start: ~{args.label_share:.0%} of "
             f"labelled pixels as polygons, fine-tune {args.steps} steps; then {args.rounds} rounds of {args.k} "
             f"windows of {args.window} px ranked by {args.score}, {MAPPERS[args.mapper]}, warm start "
             f"{args.round_steps} steps per round (batch {args.batch} × {args.tile}px, resnet18 DeepLabV3+); "
             f"{meta['grid']}.", "",
             "| strategy | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " |",
             "|---|" + "---|" * (args.rounds + 1)]
    for strategy in STRATEGIES:
        cells = [f"{row['kappa_mean']} ± {row['kappa_std']}" for row in summary["table"][strategy]]
        lines.append(f"| {strategy} (Kappa ×100) | " + " | ".join(cells) + " |")
    for strategy in STRATEGIES:
        cells = [f"{row['labelled_pixels']:,}" + (f" ({row['wasted']:.1f} wasted)" if row["wasted"] else "")
                 for row in summary["table"][strategy]]
        lines.append(f"| {strategy} (labelled px) | " + " | ".join(cells) + " |")
    lines += ["", f"Suggestions − random after round {args.rounds}: {gain:+.2f} Kappa points (per seed: "
              f"{', '.join(f'{g:+.2f}' for g in summary['gain_after_last_round']['per_seed'])}); the goal is ≥ +3."]
    (args.out / "suggest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.work is None:  # about 1 GB of models and maps per run; --work keeps them
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
