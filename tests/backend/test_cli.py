"""The `geossl` command end to end on generated GeoTIFFs, and its answers to bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from geossl.cli import main

from tests.data import pixel_box, two_class_raster, write_polygons, write_raster


def geossl(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small model shared by the CLI tests (training is the slow part)."""
    from tests.data import two_class_polygons

    d = tmp_path_factory.mktemp("cli")
    raster = two_class_raster(d / "scene.tif")
    labels = two_class_polygons(d / "labels.gpkg")
    code = main(["finetune", "--raster", str(raster), "--labels", str(labels), "--class-field", "class",
                 "--out", str(d / "m.pt"), "--steps", "16", "--steps-per-epoch", "8", "--tile", "32",
                 "--batch", "4", "--colour", "dark=#222222", "--json"])
    assert code == 0
    return {"dir": d, "raster": raster, "labels": labels, "model": d / "m.pt"}


def test_finetune_predict_evaluate(trained, capsys):
    d = trained["dir"]
    # At the training tile: this 16-step model has only seen 32-px windows of one class each, so it
    # judges by the window, and a default (raster-wide) tile mixes both halves. The default tile plan
    # is tested in test_tiling; its effect on real maps is the predict-tile sweep of the ablations.
    code, out, _ = geossl(capsys, "predict", "--model", trained["model"], "--raster", trained["raster"],
                          "--out", d / "classes.tif", "--confidence", d / "conf.tif", "--tile", "32", "--overlap", "8",
                          "--json")
    assert code == 0
    result = json.loads(out)
    with rasterio.open(trained["raster"]) as src, rasterio.open(d / "classes.tif") as cls, \
            rasterio.open(d / "conf.tif") as conf:
        assert cls.crs == src.crs and cls.transform == src.transform and cls.shape == src.shape
        assert cls.dtypes[0] == "uint8" and cls.count == 1
        assert cls.colormap(1)[2][:3] == (0x22, 0x22, 0x22)  # the user's colour for "dark" (value 2)
        assert json.loads(cls.tags()["GEOSSL_CLASSES"])["names"] == ["bright", "dark"]
        c = cls.read(1)
        p = conf.read(1)
    truth = np.repeat(np.where(np.arange(96)[None, :] < 48, 2, 1), 96, axis=0)  # bright=1, dark=2
    assert (c == truth).mean() > 0.9
    assert ((p >= 0.5) & (p <= 1.0)).all()
    assert (d / "classes.qml").exists() and result["class_pixels"]["dark"] > 0

    code, out, _ = geossl(capsys, "evaluate", "--prediction", d / "classes.tif", "--labels", trained["labels"],
                          "--class-field", "class", "--out", d / "metrics.json", "--json")
    assert code == 0
    metrics = json.loads(out)
    assert metrics["kappa"] > 0.8 and set(metrics["per_class"]) == {"bright", "dark"}
    assert json.loads((d / "metrics.json").read_text())["kappa"] == metrics["kappa"]

    ref = d / "ref.tif"
    write_raster(ref, truth[None].astype("uint8"))
    code, out, _ = geossl(capsys, "evaluate", "--prediction", d / "classes.tif", "--reference", ref, "--json")
    assert code == 0 and json.loads(out)["overall_accuracy"] == pytest.approx((c == truth).mean())

    code, out, _ = geossl(capsys, "info", "--model", trained["model"], "--json")
    info = json.loads(out)
    assert code == 0 and info["classes"]["names"] == ["bright", "dark"] and info["encoder"] == "resnet18"


def test_cog_output_holds_the_same_pixels_with_overviews(trained, capsys, tmp_path):
    raster = two_class_raster(tmp_path / "wide.tif", h=300, w=700, seed=5)
    common = ["predict", "--model", trained["model"], "--raster", raster, "--json"]
    assert geossl(capsys, *common, "--out", tmp_path / "plain.tif", "--confidence", tmp_path / "plain_p.tif")[0] == 0
    code, out, _ = geossl(capsys, *common, "--out", tmp_path / "cog.tif", "--confidence", tmp_path / "cog_p.tif",
                          "--cog")
    assert code == 0
    for plain, cog in (("plain.tif", "cog.tif"), ("plain_p.tif", "cog_p.tif")):
        with rasterio.open(tmp_path / plain) as a, rasterio.open(tmp_path / cog) as b:
            assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and "LAYOUT" not in a.tags(ns="IMAGE_STRUCTURE")
            assert b.overviews(1) and not a.overviews(1)
            assert (b.crs, b.transform, b.descriptions) == (a.crs, a.transform, a.descriptions)
            assert b.nodata == a.nodata or np.isnan(a.nodata) and np.isnan(b.nodata)
            assert np.array_equal(a.read(), b.read(), equal_nan=True)
    with rasterio.open(tmp_path / "cog.tif") as b:
        classes = set(np.unique(b.read(1)))
        assert b.colormap(1)[2][:3] == (0x22, 0x22, 0x22) and json.loads(b.tags()["GEOSSL_CLASSES"])
        # classes are never averaged: an overview holds class values only
        assert set(np.unique(b.read(1, out_shape=(75, 175)))) <= classes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_bad_inputs_give_clear_errors_and_no_output(trained, capsys, tmp_path):
    base = ["finetune", "--raster", trained["raster"], "--labels", trained["labels"], "--class-field", "class",
            "--out", tmp_path / "m.pt", "--steps", "1", "--tile", "32"]

    def fails(args, message):
        code, out, err = geossl(capsys, *args)
        assert code == 2, (out, err)
        assert message in err, err
        assert "Traceback" not in err
        return err

    fails(["finetune", "--raster", tmp_path / "nope.tif"] + base[3:], "does not exist")
    fails(base[:6] + ["landuse"] + base[7:], "has no field 'landuse' (fields: class)")
    outside = write_polygons(tmp_path / "far.gpkg", [pixel_box(500, 500, 510, 510), pixel_box(600, 0, 610, 5)],
                             ["a", "b"])
    fails(base[:4] + [outside] + base[5:], "overlaps the raster")
    fails(base[:-4] + ["--out", tmp_path / "missing" / "m.pt", "--steps", "1"], "does not exist")
    fails(base[:-2] + ["--tile", "40"], "tile must be a multiple of 16")
    nodata = write_raster(tmp_path / "nd.tif", np.zeros((3, 40, 40), "uint16"), nodata=0)
    fails(["finetune", "--raster", nodata] + base[3:], "entirely nodata")
    four = write_raster(tmp_path / "four.tif", np.ones((4, 40, 40), "uint16"))
    fails(["predict", "--model", trained["model"], "--raster", four, "--out", tmp_path / "c.tif"],
          "expects 3 bands but 'four.tif' has 4")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04garbage")
    fails(["predict", "--model", tmp_path / "broken.pt", "--raster", trained["raster"], "--out", tmp_path / "c.tif"],
          "cannot be loaded")
    assert not list(tmp_path.glob("*.pt")) or [p.name for p in tmp_path.glob("*.pt")] == ["broken.pt"]
    assert not (tmp_path / "c.tif").exists()
    if Path("/proc/self").is_dir():  # a folder every check but creating a file calls writable
        fails(["predict", "--model", trained["model"], "--raster", trained["raster"], "--out", "/proc/x.tif"],
              "No file can be created in the output folder '/proc'")
    code, out, _ = geossl(capsys, "predict", "--model", trained["model"], "--raster", four, "--out",
                          tmp_path / "c.tif", "--json")
    assert code == 2 and "expects 3 bands" in json.loads(out)["error"]


def test_polygons_in_another_crs_train(trained, capsys, tmp_path):
    from tests.data import two_class_polygons

    wgs = two_class_polygons(tmp_path / "wgs.geojson", crs="EPSG:4326")
    code, out, err = geossl(capsys, "finetune", "--raster", trained["raster"], "--labels", wgs, "--class-field",
                            "class", "--out", tmp_path / "m.pt", "--steps", "2", "--tile", "32", "--batch", "2")
    assert code == 0, err and (tmp_path / "m.pt").exists()


def test_console_script_help():
    """The installed entry point answers (README's commands rely on it)."""
    out = subprocess.run([sys.executable, "-m", "geossl.cli", "finetune", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--raster", "--labels", "--class-field", "--out", "--encoder", "--init", "--epochs", "--steps",
                 "--tile", "--seed"):
        assert flag in out


def test_predict_within_an_extent(trained, capsys, tmp_path):
    """Only the extent is classified: the output covers its pixels, on the source grid."""
    from tests.data import ORIGIN, PIXEL

    x0, y0 = ORIGIN
    extent = [x0 + 10 * PIXEL, y0 - 60 * PIXEL, x0 + 50 * PIXEL, y0 - 20 * PIXEL]  # cols 10-50, rows 20-60
    code, out, err = geossl(capsys, "predict", "--model", trained["model"], "--raster", trained["raster"],
                            "--out", tmp_path / "part.tif", "--extent", *map(str, extent), "--json")
    assert code == 0, err
    with rasterio.open(trained["raster"]) as src, rasterio.open(tmp_path / "part.tif") as part:
        assert part.shape == (40, 40) and part.crs == src.crs
        assert part.transform.c == x0 + 10 * PIXEL and part.transform.f == y0 - 20 * PIXEL
        c = part.read(1)
    truth = np.repeat(np.where(np.arange(10, 50)[None, :] < 48, 2, 1), 40, axis=0)
    assert (c == truth).mean() > 0.9
    lonlat = [13.0, 52.0, 13.1, 52.1]  # far from the raster, in another CRS
    code, _, err = geossl(capsys, "predict", "--model", trained["model"], "--raster", trained["raster"],
                          "--out", tmp_path / "none.tif", "--extent", *map(str, lonlat), "--extent-crs", "EPSG:4326")
    assert code == 2 and "does not overlap" in err and not (tmp_path / "none.tif").exists()


# --- flags → schema: every default is FinetuneParams'/PredictParams' --------------------------------

REQUIRED = ["--raster", "r.tif", "--labels", "l.gpkg", "--class-field", "fclass", "--out", "m.pt"]


@pytest.fixture
def captured(monkeypatch):
    """The parameters ``finetune``/``predict`` would run with (nothing trains: the run is replaced)."""
    import geossl.finetune
    import geossl.predict

    seen: dict = {}

    def fake(params, _progress):
        seen["params"] = params
        return {}

    monkeypatch.setattr(geossl.finetune, "run_finetune", fake)
    monkeypatch.setattr(geossl.predict, "run_predict", fake)
    monkeypatch.setattr("geossl.cli._summary", lambda *_: "")
    return seen


def test_finetune_without_options_gets_the_schemas_recipe(captured, capsys):
    from geossl.schemas import DEFAULT_FINETUNE_MINUTES, FinetuneParams

    assert geossl(capsys, "finetune", *REQUIRED)[0] == 0
    params = captured["params"]
    assert params.model_fields_set == {"rasters", "labels", "class_field", "out", "minutes"}, \
        "only the given flags (and the budget the schema fills in)"
    assert params.minutes == DEFAULT_FINETUNE_MINUTES == 8 and params.steps is None and params.epochs is None
    defaults = FinetuneParams(rasters=["r.tif"], labels="l.gpkg", class_field="fclass", out="m.pt")
    assert params == defaults


def test_finetune_flags_minutes_and_recipe_reach_the_params(captured, capsys):
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--minutes", "3", "--max-steps", "40", "--tile", "64",
                          "--no-amp", "--recipe", "ema=0.9", "--recipe", "forest=false", "--recipe",
                          "forest-texture=[5,11]", "--recipe",
                          "class_balance=0", "--colour", "water=#0000ff")
    assert code == 0, err
    params = captured["params"]
    assert (params.minutes, params.max_steps, params.tile, params.amp) == (3.0, 40, 64, False)
    assert params.ema == 0.9 and params.forest is False and params.class_balance == 0.0
    assert params.forest_texture == [5, 11]
    assert params.colours == {"water": "#0000ff"} and params.batch == 8
    assert geossl(capsys, "finetune", *REQUIRED, "--steps", "5")[0] == 0
    assert captured["params"].steps == 5 and captured["params"].minutes is None


def test_bad_budgets_and_recipes_are_refused(captured, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["finetune", *REQUIRED, "--minutes", "3", "--steps", "4"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--recipe", "emma=0.9")
    assert code == 2 and "unknown key 'emma'" in err and "class_balance" in err and "pseudo_threshold" in err
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--recipe", "ema=lots")
    assert code == 2 and "--recipe ema=lots: Input should be a valid number" in err
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--recipe", "ema=1.5")
    assert code == 2 and "less than 1" in err, "the field's constraints apply, not only its type"
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--tile", "64", "--recipe", "tile=128")
    assert code == 2 and "'tile' is given twice" in err
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--recipe", "ema")
    assert code == 2 and "is not KEY=VALUE" in err
    code, _, err = geossl(capsys, "finetune", *REQUIRED, "--recipe", "minutes=2", "--steps", "3")
    assert code == 2 and "not both" in err
    assert "params" not in captured, "nothing ran"


def test_help_quotes_the_schemas_defaults(capsys):
    from geossl.schemas import (
        DEFAULT_FINETUNE_MINUTES,
        PREDICT_BATCH_HELP,
        PREDICT_OVERLAP,
        PREDICT_TILE_HELP,
        FinetuneParams,
    )

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {DEFAULT_FINETUNE_MINUTES:g} min" in text
    for name in ("tile", "batch", "steps_per_epoch", "patience"):
        assert f"(default: {FinetuneParams.model_fields[name].default})" in text, name
    assert "--recipe KEY=VALUE" in text and "--max-steps N" in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"tiles per forward pass (default: {PREDICT_BATCH_HELP})" in text
    assert f"(default: {PREDICT_TILE_HELP})" in text and f"(default: {PREDICT_OVERLAP})" in text
    assert "--tta" in text and "default: off" in text and "--engine {auto,torch,onnxruntime}" in text


def test_predict_passes_only_the_flags_given(captured, capsys):
    base = ["predict", "--model", "m.pt", "--raster", "r.tif", "--out", "c.tif"]
    assert geossl(capsys, *base)[0] == 0
    params = captured["params"]
    assert params.model_fields_set == {"model", "raster", "out"} and params.tta is False and params.batch is None
    assert params.engine == "auto" and params.cog is False
    assert geossl(capsys, *base, "--tta", "--batch", "2", "--device", "cpu")[0] == 0
    params = captured["params"]
    assert params.model_fields_set == {"model", "raster", "out", "tta", "batch", "device"}
    assert params.tta is True and params.batch == 2 and params.device == "cpu"
