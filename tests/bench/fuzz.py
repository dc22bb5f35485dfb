"""``make fuzz``: the full reliability run, with figures in ``bench/results/fuzz.{md,json}``.

1. API fuzzing: ≥ 1000 schemathesis cases (valid and invalid requests from the OpenAPI schema, with
   the token) against a real ``geossl serve`` on 127.0.0.1 whose working folder is a temporary
   one; counts 5xx answers and checks the service is alive afterwards.
2. Load: 50 concurrent clients (40 status pollers, 10 SSE streams) while a prediction runs; p50/p99
   status latency, and the result compared with the same job run alone.
3. Huge raster: a 40 000² sparse COG — generation time and size, ``raster_info`` time, peak RSS of
   ``geossl predict`` over growing extents of it and over the whole raster (≈ 45 000 tiles of 256 px,
   minutes on a 2-core CPU because tiles that are all nodata skip the model; ``--no-huge-full`` skips it).

Not part of ``make test`` nor ``make bench``; the CI-sized versions are tests/backend/test_fuzz.py,
test_load.py and test_huge_raster.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402

from tests.backend.fuzzing import fuzz_service  # noqa: E402
from tests.backend.load import watch_job  # noqa: E402
from tests.backend.service_helpers import segmentation_model, start_server  # noqa: E402
from tests.data import ORIGIN, PEAK_RSS_MB_CODE, PIXEL, two_class_raster  # noqa: E402
from tests.huge_raster import HUGE, patches, write_sparse_cog  # noqa: E402


def run_fuzz(d: Path, examples: int, seed: int) -> dict:
    cwd = d / "cwd"
    cwd.mkdir()
    (d / "fuzz").mkdir()
    service = start_server(d / "fuzz", "--no-prewarm", cwd=cwd)
    try:
        report = fuzz_service(service.url, service.token, examples=examples, seed=seed)
        alive = service.proc.poll() is None and service.get("/health").status_code == 200
        jobs = service.get("/jobs").json()["jobs"]
    finally:
        code = service.stop()
    out = report.to_dict() | {"alive_after": alive, "jobs_left": len(jobs), "files_written_in_cwd":
                              sorted(p.name for p in cwd.iterdir()), "clean_exit": code == 0}
    print("fuzz:", {k: out[k] for k in ("cases", "count_5xx", "statuses", "duration_s", "alive_after")}, flush=True)
    return out


def run_load(d: Path, clients: int, streams: int, size: int) -> dict:
    raster = two_class_raster(d / "load.tif", h=size, w=size)
    model = segmentation_model(d / "load_model.pt")
    (d / "load").mkdir()
    service = start_server(d / "load")
    try:
        body = {"model": str(model), "raster": str(raster), "tile": 32, "overlap": 8, "batch": 1}
        alone = service.submit("predict", body | {"out": str(d / "alone.tif")})
        t0 = time.perf_counter()
        service.wait_job(alone["id"], ["succeeded"], timeout=1800)
        alone_s = time.perf_counter() - t0
        job = service.submit("predict", body | {"out": str(d / "loaded.tif")})
        t0 = time.perf_counter()
        report = watch_job(service, job["id"], clients=clients, streams=streams, timeout_s=1800)
        loaded_s = time.perf_counter() - t0
        state = service.job(job["id"])["state"]
    finally:
        service.stop()
    with rasterio.open(d / "alone.tif") as a, rasterio.open(d / "loaded.tif") as b:
        same = bool(np.array_equal(a.read(), b.read()))
    out = report.summary() | {"job_state": state, "same_result_as_alone": same, "job_alone_s": round(alone_s, 1),
                              "job_under_load_s": round(loaded_s, 1), "raster": f"{size}²"}
    print("load:", out, flush=True)
    return out


def peak_rss(model: Path, raster: Path, out: Path, extent: list[float] | None) -> tuple[float, float]:
    code = ("import sys, time; from geossl.cli import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
            f"print('PEAK', {PEAK_RSS_MB_CODE}, time.perf_counter() - t); sys.exit(rc)")
    args = ["predict", "--model", str(model), "--raster", str(raster), "--out", str(out), "--tile", "256",
            "--overlap", "64", "--batch", "8"]
    if extent:
        args += ["--extent", *map(str, extent)]
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    rss, seconds = p.stdout.split("PEAK")[1].split()[:2]
    return float(rss), float(seconds)


def run_huge(d: Path, extents: list[int], full: bool) -> dict:
    t0 = time.perf_counter()
    path = write_sparse_cog(d / "huge.tif")
    gen_s = time.perf_counter() - t0
    from geossl.raster_io import raster_info

    t0 = time.perf_counter()
    raster_info(path)
    info_s = time.perf_counter() - t0
    model = segmentation_model(d / "huge_model.pt", tile=256)
    rows = []
    col, row = patches(HUGE)[0]
    for size in extents:
        x0, y1 = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
        extent = [x0, y1 - size * PIXEL, x0 + size * PIXEL, y1]
        rss, seconds = peak_rss(model, path, d / f"huge_{size}.tif", extent)
        rows.append({"extent": f"{size}²", "pixels": size * size, "peak_rss_mb": round(rss, 1),
                     "seconds": round(seconds, 1)})
        print("huge:", rows[-1], flush=True)
    if full:
        rss, seconds = peak_rss(model, path, d / "huge_full.tif", None)
        rows.append({"extent": f"{HUGE}² (whole)", "pixels": HUGE * HUGE, "peak_rss_mb": round(rss, 1),
                     "seconds": round(seconds, 1)})
        print("huge:", rows[-1], flush=True)
    return {"size": HUGE, "file_mb": round(path.stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1),
            "info_s": round(info_s, 3), "rows": rows}


def write_results(out_dir: Path, results: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fuzz.json").write_text(json.dumps(results, indent=2))
    f, ld, h = results["fuzz"], results["load"], results["huge"]
    lines = ["# Reliability: API fuzzing, load, huge raster", "",
             f"{results['meta']['date']}, {results['meta']['machine']} ({results['meta']['processor']}), "
             f"schemathesis {results['meta']['schemathesis']}.", "",
             "| figure | value |", "|---|---|",
             f"| fuzz cases (valid + invalid, {len(f['per_operation'])} operations) | {f['cases']} |",
             f"| fuzz 5xx answers | {f['count_5xx']} |",
             f"| fuzz connection errors | {len(f['transport_errors'])} |",
             f"| answers by status | {', '.join(f'{k}: {v}' for k, v in f['statuses'].items())} |",
             f"| jobs accepted from fuzzed bodies (cancelled at once) | {len(f['accepted_jobs'])} |",
             f"| service alive after fuzzing | {'yes' if f['alive_after'] else 'NO'} |",
             f"| fuzz duration s | {f['duration_s']} |",
             f"| load: clients (pollers + streams) | {ld['clients']} ({ld['pollers']} + {ld['streams']}) |",
             f"| load: status requests, errors | {ld['status_requests']}, {ld['errors']} |",
             f"| load: status latency p50 / p99 / max ms | {ld['p50_ms']} / {ld['p99_ms']} / {ld['max_ms']} |",
             f"| load: job result same as alone | {'yes' if ld['same_result_as_alone'] else 'NO'} "
             f"({ld['job_alone_s']} s alone, {ld['job_under_load_s']} s under load) |",
             f"| huge raster {h['size']}² sparse COG: file MB, generated in s | {h['file_mb']}, {h['generate_s']} |",
             f"| huge raster: raster_info s | {h['info_s']} |"]
    lines += [f"| huge raster: predict {r['extent']}: peak RSS MB, s | {r['peak_rss_mb']}, {r['seconds']} |"
              for r in h["rows"]]
    lines += ["", "Peak RSS is the VmHWM of a separate `geossl predict` process (torch and the model included); "
              "one uint8 band of the whole 40k² raster alone would be 1 600 MB."]
    (out_dir / "fuzz.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--examples", type=int, default=50, help="valid and invalid cases per operation (≥ 1000 total)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--load-size", type=int, default=256, help="raster side of the job watched under load")
    ap.add_argument("--extents", type=int, nargs="*", default=[1024, 4096], help="predicted extents of the 40k²")
    ap.add_argument("--no-huge-full", dest="huge_full", action="store_false",
                    help="skip predicting the whole 40k² raster (2–7 min on 2 CPU cores)")
    args = ap.parse_args()
    import schemathesis

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        results = {"fuzz": run_fuzz(d, args.examples, args.seed),
                   "load": run_load(d, args.clients, args.streams, args.load_size),
                   "huge": run_huge(d, args.extents, args.huge_full)}
    results["meta"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "machine": platform.node(), "processor": platform.processor() or platform.machine(),
                       "schemathesis": schemathesis.SCHEMATHESIS_VERSION}
    write_results(args.out, results)
    failed = results["fuzz"]["cases"] < 1000 or results["fuzz"]["count_5xx"] or not results["fuzz"]["alive_after"] \
        or results["load"]["errors"] or not results["load"]["same_result_as_alone"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
