"""The benchmark tooling that is not itself a benchmark: README table splicing, how figures are
compared against their goals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.bench_pretrain import pool, vs_baseline
from tests.bench.tables import delta_line, goal_lines, paired
from tests.bench.update_readme import splice
from tests.data import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]


def test_splice_replaces_only_marked_tables_with_results(tmp_path):
    (tmp_path / "predict.md").write_text("# Title dropped\n\n| a |\n|---|\n| 1 |\n")
    readme = ("intro\n<!-- bench:predict -->\nold table\n<!-- /bench:predict -->\nprose\n"
              "<!-- bench:missing -->\nkept\n<!-- /bench:missing -->\n")
    text, updated = splice(readme, tmp_path)
    assert updated == ["predict"]
    assert "old table" not in text and "| 1 |" in text and "Title dropped" not in text
    assert "kept" in text and text.startswith("intro\n") and "prose" in text
    assert splice(text, tmp_path)[0] == text  # idempotent


def test_goal_lines_compare_seed_by_seed():
    rows = {"deep": [{"kappa": 0.62}, {"kappa": 0.58}], "forest": [{"kappa": 0.40}, {"kappa": 0.40}]}
    assert paired(rows["deep"], rows["forest"]) == pytest.approx([22.0, 18.0])
    absolute, margin = goal_lines(rows, "deep", "forest", over_baseline=20, absolute=60, max_std=2.5)
    assert absolute == "deep: Kappa 60.0 ± 2.0 over 2 seeds; goal ≥ 60, met; seed std goal ≤ 2.5, met."
    assert margin == "deep − forest: +20.0 ± 2.0 Kappa points (per seed: +22.0, +18.0); goal ≥ +20, met."
    rows["deep"][1]["kappa"] = 0.50
    absolute, margin = goal_lines(rows, "deep", "forest", over_baseline=20, absolute=60, max_std=2.5)
    assert "goal ≥ 60, not met; seed std goal ≤ 2.5, not met" in absolute and margin.endswith("not met.")
    assert delta_line("a", "b", [1.0, -1.0]) == "a − b: +0.0 ± 1.0 Kappa points (per seed: +1.0, -1.0)."


def test_pretrain_ratio_is_robust_to_one_disturbed_round():
    def run(method, medians):
        return [{"method": method, "device": "cpu", "final_loss": 1.0, "step": [m, m, m], "wait": [0.0] * 3,
                 "augment": [0.0] * 3, "regions": [0.0] * 3} for m in medians]

    base = pool(run("simclr", [1.0, 1.0, 1.0]), batch=8)
    disturbed = pool(run("glcnet", [1.2, 3.0, 1.2]), batch=8)  # one round slowed by something else
    assert disturbed["steps_timed"] == 9 and disturbed["round_medians"] == [1.2, 3.0, 1.2]
    assert vs_baseline(disturbed, base) == pytest.approx(1.2)
    assert disturbed["step_s_mean"] == pytest.approx(1.8)  # the pooled mean still shows the disturbance


@pytest.mark.skipif(not (SHARED_DATA / "dubai").is_dir() or not (SHARED_DATA / "sentinel2_brandenburg").is_dir(),
                    reason="needs ../shared/data (dubai, sentinel2_brandenburg)")
def test_the_gpu_run_goes_end_to_end_at_its_tiny_budget(tmp_path):
    """`make bench BENCH=gpu`'s script, on the CPU at its tiny budget: every step runs and writes its table,
    with pyogrio blocked in every process as on the lent GPU machine (its wheels do not fit a device call)."""
    site = tmp_path / "no-pyogrio"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['pyogrio'] = sys.modules['pyogrio.raw'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "gpu_run.py"), "--tiny", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=1500, env=env)
    report = json.loads((tmp_path / "gpu_run.json").read_text())
    assert proc.returncode == 0, report
    assert [s["returncode"] for s in report["steps"]] == [0, 0, 0] and report["glcnet_samples"] > 0
    for table in ("pretrain.md", "predict.md", "pretrain_curve.md"):
        assert (tmp_path / table).stat().st_size > 0, table
    assert "glcnet" in (tmp_path / "pretrain_curve.md").read_text()
