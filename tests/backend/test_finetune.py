"""Fine-tuning on a generated two-class scene: the loss ignores unlabeled pixels, the run is
reproducible, and the model learns the obvious split."""

import numpy as np
import pytest
import torch
from geossl.checkpoint import load_checkpoint
from geossl.classes import IGNORE_INDEX
from geossl.datasets import LabelledTiles, geometric_augment
from geossl.finetune import run_finetune
from geossl.labels import load_label_polygons
from geossl.raster_io import compute_band_stats, raster_info
from geossl.schemas import FinetuneParams
from torch import nn


def test_ignore_index_really_ignores():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE_INDEX)
    target[0, 1, 2] = 2
    nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)(logits, target).backward()
    grad = logits.grad.abs().sum(1)[0]
    assert grad[1, 2] > 0 and grad.sum() == grad[1, 2]  # only the labelled pixel contributes


def test_augment_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    y = np.arange(16).reshape(4, 4)
    for _ in range(8):
        xa, ya = geometric_augment(x, y, rng)
        np.testing.assert_array_equal(xa[0], ya)


def test_tiles_label_only_polygon_pixels(scene):
    info = raster_info(scene["raster"])
    polys, _, _ = load_label_polygons(scene["labels"], "class", [info])
    ds = LabelledTiles(polys, compute_band_stats([scene["raster"]]), tile=32, length=8, seed=0)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    labelled = y != IGNORE_INDEX
    assert labelled.any() and (~labelled).any()  # unlabeled pixels stay unlabeled, not background
    assert set(y[labelled].unique().tolist()) <= {0, 1}
    x2, y2 = ds[0]
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same (seed, epoch, index) → same window


def test_finetune_learns_and_saves_everything(scene):
    out = scene["dir"] / "m.pt"
    params = FinetuneParams(rasters=[str(scene["raster"])], labels=str(scene["labels"]), class_field="class",
                            out=str(out), steps=24, steps_per_epoch=8, tile=32, batch=4, seed=7, val_fraction=0.5)
    events = []
    result = run_finetune(params, events.append)
    assert result["steps"] == 24 and out.exists()
    assert result["validation"]["kappa"] > 0.8, result["history"]
    assert events[-1].step == 24 and any(e.loss is not None for e in events)
    ck = load_checkpoint(out, "segmentation")
    assert ck["classes"]["names"] == ["bright", "dark"] and ck["in_channels"] == 3 and ck["seed"] == 7
    assert ck["config"]["steps"] == 24 and len(ck["band_stats"]["mean"]) == 3
    assert ck["versions"]["geossl"] and ck["validation"]["kappa"] == result["validation"]["kappa"]


def test_finetune_is_reproducible(scene):
    def once(name):
        p = FinetuneParams(rasters=[str(scene["raster"])], labels=str(scene["labels"]), class_field="class",
                           out=str(scene["dir"] / name), steps=3, tile=32, batch=2, seed=1)
        run_finetune(p)
        return load_checkpoint(scene["dir"] / name)["state_dict"]

    a, b = once("a.pt"), once("b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_pretrained_init_is_refused(scene):
    from geossl.checkpoint import save_checkpoint
    from geossl.errors import GeoSSLError
    from geossl.models import build_model

    enc = scene["dir"] / "enc.pt"
    save_checkpoint(enc, "pretrained", build_model("resnet18", 4, 2).state_dict(), encoder="resnet18",
                    in_channels=4, band_stats=compute_band_stats([scene["raster"]]).to_dict() | {
                        "mean": [0.0] * 4, "std": [1.0] * 4, "low": [0.0] * 4, "high": [1.0] * 4})
    params = FinetuneParams(rasters=[str(scene["raster"])], labels=str(scene["labels"]), class_field="class",
                            out=str(scene["dir"] / "m.pt"), steps=1, tile=32, batch=2, init=str(enc))
    with pytest.raises(GeoSSLError, match="expects 4 bands, the raster has 3"):
        run_finetune(params)
    assert not (scene["dir"] / "m.pt").exists()


def test_interrupted_finetune_resumes_exactly(scene):
    """Killed after epoch 2 of 3 and resumed: the same model as an uninterrupted run."""
    from geossl.finetune import state_path

    torch.use_deterministic_algorithms(True)
    try:
        def params(name, **kw):
            return FinetuneParams(rasters=[str(scene["raster"])], labels=str(scene["labels"]), class_field="class",
                                  out=str(scene["dir"] / name), steps=6, steps_per_epoch=2, tile=32, batch=2,
                                  seed=5, patience=10, **kw)

        run_finetune(params("full.pt"))

        def crash_in_epoch_3(event):
            if event.stage == "fine-tune" and event.step == 5 and event.message is None:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_finetune(params("cut.pt"), crash_in_epoch_3)
        state = state_path(scene["dir"] / "cut.pt")
        assert state.exists() and not (scene["dir"] / "cut.pt").exists()
        events = []
        result = run_finetune(params("cut.pt", resume=True), events.append)
        assert any((e.message or "").startswith("Resuming after epoch 2 (step 4)") for e in events)
        assert result["steps"] == 6 and not state.exists()
        a = load_checkpoint(scene["dir"] / "full.pt")
        b = load_checkpoint(scene["dir"] / "cut.pt")
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        assert a["history"] == b["history"]
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_with_other_options_is_refused(scene):
    from geossl.errors import GeoSSLError
    from geossl.finetune import state_path

    def crash(event):
        if event.stage == "fine-tune" and event.step == 2 and event.message is None:
            raise KeyboardInterrupt

    base = dict(rasters=[str(scene["raster"])], labels=str(scene["labels"]), class_field="class",
                out=str(scene["dir"] / "m.pt"), steps=4, steps_per_epoch=1, tile=32, batch=2)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(FinetuneParams(**base), crash)
    assert state_path(scene["dir"] / "m.pt").exists()
    with pytest.raises(GeoSSLError, match=r"other options \(lr\)"):
        run_finetune(FinetuneParams(**base, lr=0.01, resume=True))
