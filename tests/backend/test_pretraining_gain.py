"""The measured pretraining gain: the table built from benchmark results, the one shipped with the
package, and the lookup the panel relies on (never beyond what was measured)."""

import pytest
from geossl.pretraining_gain import estimate_gain, load_gain_table, pick_dataset, verdict

from tests.bench.gain_table import build_gain_table, gain_point, seed_curve


def curve() -> dict:
    """A curve result: Dubai at 10, 30 and 60 min for GLCNet, Sentinel-2 for BYOL, 3 seeds each."""
    return {
        "meta": {"date": "2027-01-05T03:00:00+00:00", "machine": "vm", "hardware": "cpu-2-cores",
                 "hardware_label": "2-core CPU", "protocol": "constant schedule, one run with snapshots"},
        "datasets": {
            "dubai-rgb": {"label": "Dubai RGB", "bands": 3, "finetune": "150 steps", "pretrain": "16 × 128 px",
                          "random": [0.40, 0.44, 0.42],
                          "pretrained": {"glcnet": [
                              {"minutes": 60, "steps": 4500, "kappa": [0.39, 0.45, 0.41]},  # −0.33 ± 0.94
                              {"minutes": 10, "steps": 760, "kappa": [0.43, 0.41, 0.46]},  # +1.33 ± 3.09
                              {"minutes": 30, "steps": 2280, "kappa": [0.44, 0.48, 0.46]}]}},  # +4 ± 0
            "sentinel2-13band": {"label": "Sentinel-2 (13 bands)", "bands": 13, "date": "2027-01-02",
                                 "finetune": "150 steps", "pretrain": "16 × 128 px", "random": [0.30, 0.32],
                                 "pretrained": {"byol": [{"minutes": 10, "steps": 700, "kappa": [0.35, 0.33]}]}},
        },
    }


def test_gain_table_from_a_curve_result_pairs_seeds_and_sorts_budgets():
    table = build_gain_table(curve())
    assert table["schema"] == 1 and table["measured"] == "2027-01-05" and table["hardware"] == "cpu-2-cores"
    dubai = table["datasets"]["dubai-rgb"]
    assert dubai["measured"] == "2027-01-05" and table["datasets"]["sentinel2-13band"]["measured"] == "2027-01-02"
    points = dubai["curves"]["glcnet"]
    assert [p["minutes"] for p in points] == [10, 30, 60]
    assert points[0] == {"minutes": 10, "steps": 760, "delta_kappa": 1.33, "std": 3.09, "seeds": 3,
                         "per_seed": [3.0, -3.0, 4.0]}
    assert points[1]["delta_kappa"] == 4.0 and points[1]["std"] == 0.0
    assert points[2]["per_seed"] == [-1.0, 1.0, -1.0] and points[2]["std"] == 0.94
    with pytest.raises(ValueError, match="pair them by seed"):
        gain_point(10, 760, [0.4, 0.5], [0.4, 0.5, 0.6])


def test_the_shipped_table_is_the_committed_few_label_results():
    shipped = load_gain_table()  # package data: what an installed backend reads
    assert shipped == build_gain_table(seed_curve())
    glcnet = shipped["datasets"]["dubai-rgb"]["curves"]["glcnet"]
    # bench/results/archive/fewlabel_2026-11-23.md: "glcnet − random init: -2.0 ± 5.3 Kappa points (per seed: +2.0, +1.5, -9.4)"
    assert glcnet == [{"minutes": 5.25, "steps": 400, "delta_kappa": -1.96, "std": 5.29, "seeds": 3,
                       "per_seed": [2.02, 1.52, -9.43]}]
    assert set(shipped["datasets"]["sentinel2-13band"]["curves"]) == {"byol", "moco", "rs-byol"}
    assert all(verdict(p) == "no-gain" for d in shipped["datasets"].values() for c in d["curves"].values() for p in c)


def test_lookup_quotes_the_nearest_measured_budget_at_or_below_and_never_extrapolates():
    table = build_gain_table(curve())
    at = estimate_gain(table, "glcnet", minutes=10, bands=3)
    assert at["basis"] == "measured" and at["exact"] and at["verdict"] == "no-gain"  # +1.33 within ± 3.09
    assert at["point"]["delta_kappa"] == 1.33 and at["dataset_label"] == "Dubai RGB"
    assert at["pays_from"]["minutes"] == 30 and at["largest"] == {"minutes": 60, "steps": 4500}
    between = estimate_gain(table, "glcnet", minutes=45, bands=3)
    assert between["basis"] == "measured" and not between["exact"] and between["point"]["minutes"] == 30
    assert between["verdict"] == "pays"
    assert estimate_gain(table, "glcnet", minutes=61, bands=3)["exact"]  # within 2% of 60
    assert estimate_gain(table, "glcnet", minutes=60, bands=3)["verdict"] == "no-gain"  # −0.33
    beyond = estimate_gain(table, "glcnet", minutes=480, bands=3)
    assert beyond["basis"] == "beyond" and beyond["verdict"] == "unmeasured" and beyond["point"]["minutes"] == 60
    below = estimate_gain(table, "glcnet", minutes=5, bands=3)
    assert below["basis"] == "below" and below["verdict"] == "unmeasured" and below["point"]["minutes"] == 10
    assert below["point"]["verdict"] == "no-gain" and beyond["point"]["verdict"] == "no-gain"  # each point judged
    by_steps = estimate_gain(table, "glcnet", steps=3000, bands=3)
    assert by_steps["axis"] == "steps" and by_steps["point"]["steps"] == 2280 and by_steps["verdict"] == "pays"
    none = estimate_gain(table, "simclr", minutes=30, bands=3)
    assert none["basis"] == "none" and none["point"] is None and none["verdict"] == "unmeasured"
    two_seeds = estimate_gain(table, "byol", minutes=10, bands=13)
    assert two_seeds["dataset"] == "sentinel2-13band" and two_seeds["point"]["delta_kappa"] == 3.0
    assert two_seeds["verdict"] == "pays"  # +3.0 ± 2.0 over 2 seeds
    with pytest.raises(ValueError, match="minutes or as steps"):
        estimate_gain(table, "glcnet", minutes=10, steps=100)


def test_verdict_and_dataset_choice():
    assert verdict({"delta_kappa": 1.2, "std": 3.0, "seeds": 3}) == "no-gain"  # within noise
    assert verdict({"delta_kappa": -0.5, "std": 0.1, "seeds": 3}) == "no-gain"
    assert verdict({"delta_kappa": 3.1, "std": 3.0, "seeds": 3}) == "pays"
    assert verdict({"delta_kappa": 5.0, "std": 0.0, "seeds": 1}) == "no-gain"  # one seed proves nothing
    table = build_gain_table(curve())
    assert [pick_dataset(table, b) for b in (1, 3, 4, 8, 9, 10, 13, 200)] == [
        "dubai-rgb", "dubai-rgb", "dubai-rgb", "dubai-rgb", "sentinel2-13band", "sentinel2-13band",
        "sentinel2-13band", "sentinel2-13band"]
    assert pick_dataset(table, None) == "dubai-rgb"
