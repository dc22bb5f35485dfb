"""Does pretraining pay, and from how many CPU-minutes? One pretraining run per method, many fine-tunes.

As users do it: pretrain once (``geossl pretrain --minutes M --lr-schedule constant
--snapshot-minutes …``: with the constant schedule each snapshot is what a run of that length ends
with), then fine-tune from each snapshot with GeoSSL's default recipe, on the same polygons per seed
as a fine-tune from random init (budget 0). The gain is Kappa, pretrained − random init, paired by
seed. Pretraining runs alone with every core (its budget is wall time); the fine-tunes have a fixed
number of steps (default: what the default budget planned in the few-label table), so they may run
side by side (``--jobs 2``, one thread each) and still be the same recipe for every row.

Each fine-tune's result is appended to ``--log`` as it finishes and skipped when found there, so a
stopped run continues where it was. At the end: bench/results/pretrain_curve.{md,json} and the
panel's measured-gain table (``geossl/data/pretraining_gain.json``, via ``gain_table``).

    backend/.venv/bin/python tests/bench/pretrain_curve.py --methods glcnet simclr --minutes 60 \
        --snapshots 10 30 --seeds 0 1 2 3 4 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import dubai, gain_table, tables  # noqa: E402
from tests.data import SHARED_DATA  # noqa: E402

GEOSSL = [sys.executable, "-m", "geossl.cli"]  # no console script needed (the GPU machine has none)


def pretrain(method: str, scenes, work: Path, args) -> dict:
    """One run of ``args.minutes`` with snapshots; returns {minutes: (steps, path)} incl. the final one."""
    out = work / f"{method}.pt"
    done = work / f"{method}.summary.json"
    if done.exists():
        return json.loads(done.read_text())
    cmd = [*GEOSSL, "pretrain", "--method", method, "--out", str(out), "--minutes", str(args.minutes),
           "--lr-schedule", "constant", "--snapshot-minutes", *map(str, args.snapshots), "--tile",
           str(args.pretrain_tile), "--batch", str(args.pretrain_batch), "--seed", "0", "--json",
           "--workers", str(args.pretrain_workers), "--resume"]
    for s in scenes:
        cmd += ["--raster", str(s.image)]
    t = time.perf_counter()
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    by_minutes = summary["plan"]["snapshot_minutes"]
    paths = {s["step"]: s["path"] for s in summary["snapshots"]}
    points = {str(float(m)): {"steps": int(step), "path": paths[int(step)]} for m, step in by_minutes.items()}
    points[str(float(args.minutes))] = {"steps": summary["steps"], "path": summary["model"]}
    info = {"method": method, "points": points, "seconds": round(time.perf_counter() - t, 1),
            "plan": summary["plan"], "train_seconds": summary["train_seconds"]}
    done.write_text(json.dumps(info, indent=1))
    return info


def finetune_cmd(rasters, labels: Path, out: Path, seed: int, init: str | None, finetune: dict) -> list[str]:
    code = ("import json,sys,torch;torch.set_num_threads(int(sys.argv[1]));"
            "from geossl.finetune import run_finetune;from geossl.schemas import FinetuneParams;"
            "r=run_finetune(FinetuneParams(**json.loads(sys.argv[2])));"
            "print(json.dumps({'steps':r['steps'],'seconds':r['seconds']}))")
    params = {"rasters": [str(r) for r in rasters], "labels": str(labels), "class_field": "class", "out": str(out),
              "seed": seed, **({"init": init} if init else {}), **finetune}
    return [sys.executable, "-c", code, "THREADS", json.dumps(params)]


def run_one(key: str, scenes, used, labels: Path, work: Path, seed: int, init: str | None, args) -> dict:
    from geossl.predict import run_predict
    from geossl.schemas import PredictParams

    from tests.bench.fewlabel import result

    model = work / f"model_{key}.pt"
    cmd = finetune_cmd([s.image for s in scenes], labels, model, seed, init, args.finetune)
    cmd[cmd.index("THREADS")] = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ft = json.loads(res.stdout.strip().splitlines()[-1])
    maps = []
    for s in scenes:
        out = work / f"pred_{key}_{s.image.stem}.tif"
        run_predict(PredictParams(model=str(model), raster=str(s.image), out=str(out)))
        maps.append(out)
    r = result(scenes, used, maps, ft["seconds"], steps=ft["steps"])
    model.unlink(missing_ok=True)
    for m in maps:
        m.unlink(missing_ok=True)
        m.with_suffix(".qml").unlink(missing_ok=True)
    return r


def write_outputs(args, scenes, pre: dict, runs: dict) -> str:
    random = [runs[f"random/{s}"]["kappa"] for s in args.seeds if f"random/{s}" in runs]
    ft = args.finetune_text
    dataset = {"label": "Dubai RGB", "bands": 3, "finetune": ft,
               "pretrain": f"batch {args.pretrain_batch} × {args.pretrain_tile} px, constant schedule, "
                           f"one {args.minutes:g}-min run per method on the {len(scenes)} tiles",
               "random": random, "pretrained": {}}
    lines, rows = [], {"random init (0 min)": [runs[f"random/{s}"] for s in args.seeds if f"random/{s}" in runs]}
    for method, info in pre.items():
        points = []
        for minutes, p in sorted(info["points"].items(), key=lambda kv: float(kv[0])):
            got = [runs.get(f"{method}/{minutes}/{s}") for s in args.seeds]
            if any(g is None for g in got) or len(got) != len(random):
                continue
            points.append({"minutes": float(minutes), "steps": p["steps"], "kappa": [g["kappa"] for g in got]})
            name = f"{method} {float(minutes):g} min ({p['steps']} steps)"
            rows[name] = got
            lines.append(tables.delta_line(name, "random init", tables.paired(got, rows["random init (0 min)"]),
                                           5.0 if method == "glcnet" else None))
        dataset["pretrained"][method] = points
    meta = tables.meta(seeds=args.seeds, minutes=args.minutes, snapshots=args.snapshots, finetune=ft,
                       pretrain={m: {k: v for k, v in i.items() if k != "points"} for m, i in pre.items()},
                       hardware=args.hardware, hardware_label=args.hardware_label,
                       protocol=("One pretraining run per method (constant schedule, snapshots at each budget), "
                                 f"seed 0, alone on the {args.hardware_label}; each seed fine-tunes from random init and from "
                                 "each snapshot with the default recipe on the same polygons (Dubai tiles 1–2, "
                                 "~1 % of pixels); gain = Kappa on the other labelled pixels, pretrained − random "
                                 "init, paired by seed (mean ± population std)."))
    caption = (f"{meta['date']}; {len(scenes)} Dubai images; fine-tune: {ft}; pretraining: "
               f"{dataset['pretrain']}; minutes are wall time on the {args.hardware_label} ({meta['cpu']}).")
    md = tables.markdown("Pretraining budget curve — Dubai aerial tiles", caption, rows, [("Kappa", "kappa")],
                         ["Gain over random init, paired by seed (GLCNet goal ≥ +5 at ≤ 60 min): "] + lines)
    curve = {"meta": meta, "datasets": {"dubai-rgb": dataset}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrain_curve.json").write_text(json.dumps({**curve, "runs": runs}, indent=1))
    (args.out / "pretrain_curve.md").write_text(md)
    if args.gain_table and random:
        gain_table.write_gain_table(gain_table.build_gain_table(curve))
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "dubai")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "geossl-pretrain-curve",
                    help="pretrained encoders and the run log stay here (resumable)")
    ap.add_argument("--methods", nargs="+", default=["glcnet", "simclr"])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--snapshots", type=float, nargs="+", default=[10, 30])
    ap.add_argument("--pretrain-tile", type=int, default=128)
    ap.add_argument("--pretrain-batch", type=int, default=16)
    ap.add_argument("--pretrain-workers", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--finetune", type=json.loads, default=None,
                    help="FinetuneParams overrides (JSON); default: the steps the default budget planned in "
                         "bench/results/fewlabel.json")
    ap.add_argument("--jobs", type=int, default=1, help="fine-tunes side by side")
    ap.add_argument("--no-gain-table", dest="gain_table", action="store_false")
    ap.add_argument("--hardware", default="cpu-2-cores", help="the gain table's key for this machine")
    ap.add_argument("--hardware-label", default="2-core CPU")
    args = ap.parse_args()
    if args.finetune is None:
        few = json.loads((args.out / "fewlabel.json").read_text())
        steps = int(np.median([r["steps"] for r in few["runs"]["GeoSSL default"]]))
        args.finetune = {"steps": steps}
    args.threads = max(1, (os.cpu_count() or 2) // args.jobs)
    args.finetune_text = ("GeoSSL's default recipe, " + ", ".join(f"{k} {v}" for k, v in args.finetune.items())
                          + f", {args.threads} thread(s) each, {args.jobs} side by side")
    args.work.mkdir(parents=True, exist_ok=True)
    scenes = dubai.prepare(args.data, args.work / "scenes", args.images)
    pre = {m: pretrain(m, scenes, args.work, args) for m in args.methods}
    log = args.work / "runs.jsonl"
    runs = {r["key"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    tasks = []
    for seed in args.seeds:
        geoms, names, used = dubai.draw_polygons(scenes, seed)
        # GeoJSON, written and read without pyogrio (the GPU machine has none: tests/bench/gpu_run.py)
        labels = dubai.write_geojson(args.work / f"labels_{seed}.geojson", geoms, names)
        tasks.append((f"random/{seed}", seed, used, labels, None))
        for method, info in pre.items():
            for minutes, p in info["points"].items():
                tasks.append((f"{method}/{minutes}/{seed}", seed, used, labels, p["path"]))
    todo = [t for t in tasks if t[0] not in runs]
    print(f"{len(tasks) - len(todo)} fine-tunes found in {log}, {len(todo)} to run", flush=True)

    def work(task):
        key, seed, used, labels, init = task
        r = run_one(key.replace("/", "_"), scenes, used, labels, args.work, seed, init, args)
        r["key"] = key
        with log.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{key}: kappa {r['kappa']:.3f} ({r['train_seconds']} s)", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(work, todo):
            runs[r["key"]] = r
    print(write_outputs(args, scenes, pre, runs))


if __name__ == "__main__":
    main()
