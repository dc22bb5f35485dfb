"""The benchmark tooling that is not itself a benchmark: README table splicing, how figures are
compared against their goals."""

import pytest

from tests.bench.bench_pretrain import pool, vs_baseline
from tests.bench.fewlabel import paired_deltas
from tests.bench.update_readme import splice


def test_splice_replaces_only_marked_tables_with_results(tmp_path):
    (tmp_path / "predict.md").write_text("# Title dropped\n\n| a |\n|---|\n| 1 |\n")
    readme = ("intro\n<!-- bench:predict -->\nold table\n<!-- /bench:predict -->\nprose\n"
              "<!-- bench:missing -->\nkept\n<!-- /bench:missing -->\n")
    text, updated = splice(readme, tmp_path)
    assert updated == ["predict"]
    assert "old table" not in text and "| 1 |" in text and "Title dropped" not in text
    assert "kept" in text and text.startswith("intro\n") and "prose" in text
    assert splice(text, tmp_path)[0] == text  # idempotent


def test_paired_deltas_compare_seed_by_seed_against_each_goal():
    rows = {"glcnet": [{"kappa": 0.50}, {"kappa": 0.40}], "random init": [{"kappa": 0.38}, {"kappa": 0.32}],
            "random forest": [{"kappa": 0.20}, {"kappa": 0.30}]}
    lines = paired_deltas(rows)
    assert len(lines) == 2  # no SimCLR row, no SimCLR line
    assert lines[0].startswith("glcnet − random init: +10.0 ± 2.0") and "+12.0, +8.0" in lines[0]
    assert lines[0].endswith("goal ≥ +10, met.")
    assert lines[1].startswith("glcnet − random forest: +20.0 ± 10.0") and lines[1].endswith("met.")
    rows["glcnet"][0]["kappa"] = 0.46
    assert paired_deltas(rows)[0].endswith("not met.")
    assert paired_deltas({"random init": rows["random init"]}) == []


def test_pretrain_ratio_is_robust_to_one_disturbed_round():
    def run(method, medians):
        return [{"method": method, "device": "cpu", "final_loss": 1.0, "step": [m, m, m], "wait": [0.0] * 3,
                 "augment": [0.0] * 3, "regions": [0.0] * 3} for m in medians]

    base = pool(run("simclr", [1.0, 1.0, 1.0]), batch=8)
    disturbed = pool(run("glcnet", [1.2, 3.0, 1.2]), batch=8)  # one round slowed by something else
    assert disturbed["steps_timed"] == 9 and disturbed["round_medians"] == [1.2, 3.0, 1.2]
    assert vs_baseline(disturbed, base) == pytest.approx(1.2)
    assert disturbed["step_s_mean"] == pytest.approx(1.8)  # the pooled mean still shows the disturbance
