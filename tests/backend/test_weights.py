"""Starting from weights users have: generated torchvision/timm weight files (random, seeded — nothing is
downloaded), ImageNet from fake local caches with the network cut, band-count adaptation, the refusals,
fine-tuning and continued pretraining from them (with resume), and the API's answer before queueing."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import huggingface_hub
import huggingface_hub.file_download
import pytest
import timm
import torch
import torchvision
from geossl.checkpoint import load_checkpoint
from geossl.cli import main
from geossl.errors import GeoSSLError
from geossl.models import build_model
from geossl.pretrain import _build, run_pretrain
from geossl.schemas import FinetuneParams, PretrainParams
from geossl.weights import (
    adapt_first_conv,
    encoder_start,
    imagenet_files,
    imagenet_state,
    load_state_dict_file,
    plain_weights,
)
from pydantic import ValidationError

from tests.backend.service_helpers import segmentation_model, start_server
from tests.data import two_class_polygons, two_class_raster

TINY = ["--steps", "2", "--tile", "32", "--batch", "2"]
TORCHVISION_R18 = "resnet18-f37072fd.pth"  # ResNet18_Weights.IMAGENET1K_V1 of torchvision 0.29


def geossl(capture, *args):
    """Run the CLI in-process; ``capture`` is capsys, or capsys where the progress bars' stderr is wanted."""
    code = main([str(a) for a in args])
    out, err = capture.readouterr()
    return code, out, err


class Config:
    """A custom class: a pickle holding one needs code to load."""


class Payload:
    """Pickles as a call to open(marker, "w"): loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weight files as users get them, generated from seeded random models."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(r18, d / "resnet18.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in r18.items()}, "epoch": 3,
                "hyper_parameters": {"lr": 0.1}}, d / "wrapped.ckpt")
    torch.manual_seed(1)
    # torchgeo's SSL4EO-S12 files are timm resnets with 13 input bands and no classifier.
    s2 = timm.create_model("resnet18", pretrained=False, in_chans=13, num_classes=0).state_dict()
    torch.save(s2, d / "ssl4eo_s2_13.pth")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), d / "resnet50.pth")
    torch.save({"state_dict": r18, "config": Config()}, d / "custom_class.pth")
    torch.save({"state_dict": r18, "hook": Payload(d / "ran.txt")}, d / "runs_code.pth")
    four = two_class_raster(d / "four.tif", bands=4)
    return {"dir": d, "r18": r18, "s2": s2, "four": four, "labels": two_class_polygons(d / "labels.gpkg")}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty torch and Hugging Face caches; any download or network connection fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_args, **_kwargs):
        raise AssertionError("GeoSSL tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", no_network)
    return {"torch": tmp_path / "torch" / "hub" / "checkpoints", "hf": tmp_path / "hf" / "hub"}


def expected_conv1(w: torch.Tensor, bands: int) -> torch.Tensor:
    """The documented rule, written out: channel i is the file's channel i mod C, all scaled by C / bands."""
    c = w.shape[1]
    return w[:, [i % c for i in range(bands)]] * (c / bands)


def assert_loaded(model, state: dict[str, torch.Tensor], bands: int) -> None:
    """Every encoder tensor equals the file's; conv1 the file's adapted to ``bands``."""
    got = model.encoder.state_dict()
    assert set(got) == {k for k in state if not k.startswith("fc.")}
    for k, v in got.items():
        if k != "conv1.weight":
            assert torch.equal(v, state[k]), k
    conv = state["conv1.weight"]
    assert torch.equal(got["conv1.weight"], conv if conv.shape[1] == bands else expected_conv1(conv, bands))


@pytest.mark.parametrize(("name", "bands", "adapted"), [
    ("resnet18.pth", 4, "conv1 from 3 to 4 bands"), ("resnet18.pth", 13, "conv1 from 3 to 13 bands"),
    ("wrapped.ckpt", 4, "conv1 from 3 to 4 bands"),
    ("ssl4eo_s2_13.pth", 13, None), ("ssl4eo_s2_13.pth", 4, "conv1 from 13 to 4 bands")])
def test_weight_files_load_into_4_and_13_band_models(files, name, bands, adapted):
    weights = load_state_dict_file(files["dir"] / name)
    model = build_model("resnet18", bands, 2)
    report = weights.load_into(model, "resnet18")
    assert_loaded(model, files["s2" if name.startswith("ssl4eo") else "r18"], bands)
    assert report["architecture"] == "resnet18" and report["loaded"] == 120 and report["bands"] == bands
    assert report["adapted"] == adapted or report["adapted"].startswith(adapted)
    assert report["ignored"] == (0 if name.startswith("ssl4eo") else 2)  # the classifier (fc) is dropped
    if name == "wrapped.ckpt":
        assert report["origin"] == "state dict under 'state_dict', prefix 'module.'"
        assert report["summary"].startswith("Starting from the weights of wrapped.ckpt (state dict under")


def test_first_conv_rule():
    w = torch.randn(64, 3, 7, 7)
    assert adapt_first_conv(w, 3) is w
    assert torch.equal(adapt_first_conv(w, 1), w.sum(1, keepdim=True))  # grey: all RGB filters summed
    assert torch.equal(adapt_first_conv(w, 5)[:, 3], w[:, 0] * (3 / 5))
    assert torch.allclose(adapt_first_conv(w, 6).sum(1), w.sum(1))  # the filters' sum over bands is kept


def test_wrappers_and_prefixes_of_other_trainers(files):
    r18 = files["r18"]
    dino = {"teacher": {f"backbone.{k}": v for k, v in r18.items()},
            "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in r18.items()}}
    moco = {"state_dict": {**{f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in r18.items()},
                           **{f"module.encoder_q.{k}": v for k, v in r18.items()}}}
    for payload in (dino, moco):
        weights = plain_weights(payload, Path("x.pth"))
        assert weights.architecture == "resnet18"
        assert all(torch.equal(weights.state[k], r18[k]) for k in weights.state)  # teacher / query encoder
    two = {f"a.{k}": v for k, v in r18.items()} | {f"b.{k}": v for k, v in r18.items()}
    with pytest.raises(GeoSSLError, match="several ResNet encoders"):
        plain_weights(two, Path("two.pth"))
    with pytest.raises(GeoSSLError, match="holds no state dict"):
        plain_weights({"epoch": 3}, Path("empty.pth"))


def test_finetune_from_a_weight_file_via_cli_records_the_init(files, capsys):
    out = files["dir"] / "m.pt"
    code, _, err = geossl(capsys, "finetune", "--raster", files["four"], "--labels", files["labels"],
                          "--class-field", "class", "--out", out, "--init", files["dir"] / "wrapped.ckpt", *TINY)
    assert code == 0, err
    init = load_checkpoint(out, "segmentation")["init"]
    assert init["source"] == "file" and init["path"] == str(files["dir"] / "wrapped.ckpt")
    assert init["loaded"] == 120 and init["bands_in_file"] == 3 and init["bands"] == 4
    assert init["adapted"].startswith("conv1 from 3 to 4 bands")


def test_files_that_would_run_code_are_refused(files, capsys):
    with pytest.raises(GeoSSLError, match=r"holds Python objects besides weights \(a .*Config\)"):
        load_state_dict_file(files["dir"] / "custom_class.pth")
    code, _, err = geossl(capsys, "finetune", "--raster", files["four"], "--labels", files["labels"],
                          "--class-field", "class", "--out", files["dir"] / "x.pt", "--init",
                          files["dir"] / "runs_code.pth", *TINY)
    assert code == 2 and "loading it could run code, so GeoSSL refuses it" in err
    assert not (files["dir"] / "ran.txt").exists() and not (files["dir"] / "x.pt").exists()


def test_a_resnet50_file_for_resnet18_is_refused_naming_the_encoder(files, capsys):
    code, _, err = geossl(capsys, "finetune", "--raster", files["four"], "--labels", files["labels"],
                          "--class-field", "class", "--out", files["dir"] / "x.pt", "--init",
                          files["dir"] / "resnet50.pth", *TINY)
    assert code == 2 and "holds a resnet50 encoder, but the encoder to train is resnet18" in err
    assert "use --encoder resnet50" in err
    with pytest.raises(GeoSSLError, match="lacks 1 of the resnet18"):  # a file missing one weight
        plain_weights({k: v for k, v in files["r18"].items() if k != "layer2.0.bn1.weight"},
                      Path("cut.pth")).load_into(build_model("resnet18", 3, 2), "resnet18")


def test_imagenet_not_cached_names_the_file_and_downloads_nothing(files, offline, capsys):
    code, _, err = geossl(capsys, "finetune", "--raster", files["four"], "--labels", files["labels"],
                          "--class-field", "class", "--out", files["dir"] / "x.pt", "--encoder-weights", "imagenet",
                          *TINY)
    assert code == 2, err
    assert f"download https://download.pytorch.org/models/{TORCHVISION_R18} and copy it to " \
           f"{offline['torch'] / TORCHVISION_R18}" in err
    assert str(offline["hf"] / "models--smp-hub--resnet18.imagenet" / "snapshots") in err  # the other cache
    assert not (files["dir"] / "x.pt").exists() and not offline["torch"].exists()


def test_imagenet_from_the_torchvision_cache_fine_tunes(files, offline, capsys):
    offline["torch"].mkdir(parents=True)
    torch.save(files["r18"], offline["torch"] / TORCHVISION_R18)  # stands in for the real download
    weights = imagenet_state("resnet18")
    assert weights.source == "imagenet" and weights.origin == "torchvision IMAGENET1K_V1, local cache"
    model = build_model("resnet18", 4, 2)
    weights.load_into(model, "resnet18")
    assert_loaded(model, files["r18"], 4)

    out = files["dir"] / "imagenet.pt"
    code, _, err = geossl(capsys, "finetune", "--raster", files["four"], "--labels", files["labels"],
                          "--class-field", "class", "--out", out, "--encoder-weights", "imagenet", *TINY)
    assert code == 0, err
    ck = load_checkpoint(out, "segmentation")
    assert ck["init"]["source"] == "imagenet" and ck["init"]["path"] == str(offline["torch"] / TORCHVISION_R18)
    assert ck["config"]["encoder_weights"] == "imagenet"


def test_imagenet_from_smps_hugging_face_cache(files, offline):
    from safetensors.torch import save_file

    _what, _url, path = imagenet_files("resnet18")[-1]
    assert path.is_relative_to(offline["hf"] / "models--smp-hub--resnet18.imagenet" / "snapshots")
    path.parent.mkdir(parents=True)
    encoder = build_model("resnet18", 3, 1).encoder.state_dict()  # what smp-hub holds: the encoder, no fc
    save_file({k: v.contiguous() for k, v in encoder.items()}, path)
    weights = imagenet_state("resnet18")
    assert weights.origin.startswith("segmentation-models-pytorch smp-hub/resnet18.imagenet")
    assert weights.state.keys() == encoder.keys() and all(torch.equal(weights.state[k], encoder[k]) for k in encoder)


def test_one_start_only():
    base = {"rasters": ["r.tif"], "labels": "l.gpkg", "class_field": "c", "out": "m.pt"}
    with pytest.raises(ValidationError, match="either encoder_weights or init"):
        FinetuneParams(**base, init="w.pth", encoder_weights="imagenet")
    with pytest.raises(ValidationError, match="either encoder_weights or init_model"):
        FinetuneParams(**base, init_model="m0.pt", encoder_weights="imagenet")
    with pytest.raises(ValidationError, match="either encoder_weights or init"):
        PretrainParams(rasters=["r.tif"], out="e.pt", init="w.pth", encoder_weights="imagenet")


def test_pretrain_continues_from_a_weight_file_and_resumes_exactly(files, tmp_path, capsys):
    init = files["dir"] / "ssl4eo_s2_13.pth"

    def params(name: str, **kw) -> PretrainParams:
        return PretrainParams(**{"rasters": [str(files["four"])], "out": str(tmp_path / name), "method": "byol",
                                 "tile": 64, "batch": 2, "steps": 2, "checkpoint_every": 1, "seed": 5,
                                 "init": str(init), **kw})

    trainer = _build(params("x.pt"), 2, 4, torch.device("cpu"), start=encoder_start(str(init), None, "resnet18"))
    assert_loaded(trainer.method.model, files["s2"], 4)
    target = trainer.method.target_encoder.state_dict()  # BYOL's target starts as the same weights
    assert all(torch.equal(v, target[k]) for k, v in trainer.method.model.encoder.state_dict().items())

    class Crash(Exception):
        pass

    def crash_after_step_1(ev):
        if ev.step == 1 and ev.loss is not None:
            raise Crash

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        code, _, err = geossl(capsys, "pretrain", "--method", "byol", "--raster", files["four"], "--out",
                              tmp_path / "full.pt", "--init", init, "--tile", "64", "--batch", "2", "--steps", "2",
                              "--seed", "5", "--checkpoint-every", "1")
        assert code == 0, err
        with pytest.raises(Crash):
            run_pretrain(params("cut.pt"), crash_after_step_1)
        with pytest.raises(GeoSSLError, match=r"other options \(init\)"):
            run_pretrain(params("cut.pt", init=None, resume=True))
        result = run_pretrain(params("cut.pt", resume=True))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert result["steps"] == 2
    full, cut = load_checkpoint(tmp_path / "full.pt", "pretrained"), load_checkpoint(tmp_path / "cut.pt", "pretrained")
    assert all(torch.equal(full["state_dict"][k], cut["state_dict"][k]) for k in full["state_dict"])
    for ck in (full, cut):  # the resumed run still says what it started from
        assert ck["init"]["source"] == "file" and ck["init"]["path"] == str(init)
        assert ck["init"]["adapted"].startswith("conv1 from 13 to 4 bands")


def test_pretrain_from_a_geossl_models_encoder_keeps_its_bands(tmp_path):
    model_file = segmentation_model(tmp_path / "seg.pt", bands=3)
    start = encoder_start(str(model_file), None, "resnet18")
    model = build_model("resnet18", 3, 1)
    assert start.load_into(model, "resnet18")["source"] == "geossl"
    saved = load_checkpoint(model_file)["state_dict"]
    assert all(torch.equal(v, saved[f"encoder.{k}"]) for k, v in model.encoder.state_dict().items())
    with pytest.raises(GeoSSLError, match="was trained on 3 bands, the raster has 4"):
        start.load_into(build_model("resnet18", 4, 1), "resnet18")


@pytest.fixture(scope="module")
def empty_cache_service(files, tmp_path_factory):
    """The job service with empty torch/Hugging Face caches (as on an offline machine)."""
    d = tmp_path_factory.mktemp("service")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(d / "torch"))
        mp.setenv("HF_HOME", str(d / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        service = start_server(d)
    yield service
    assert service.stop() == 0, service.log_text()


def test_the_api_refuses_bad_starts_before_queueing(files, empty_cache_service, tmp_path):
    service = empty_cache_service
    base = {"rasters": [str(files["four"])], "labels": str(files["labels"]), "class_field": "class",
            "out": str(tmp_path / "m.pt"), "steps": 2, "tile": 32, "batch": 2}
    cases = [
        ("finetune", base | {"init": str(tmp_path / "missing.pth")}, "does not exist"),
        ("finetune", base | {"encoder_weights": "imagenet"}, f"download https://download.pytorch.org/models/"
                                                           f"{TORCHVISION_R18} and copy it to "),
        ("finetune", base | {"init": str(files["dir"] / "resnet50.pth")}, "use --encoder resnet50"),
        ("finetune", base | {"init": str(files["dir"] / "wrapped.ckpt"), "encoder_weights": "imagenet"},
         "either encoder_weights or init"),
        ("pretrain", {"rasters": [str(files["four"])], "out": str(tmp_path / "e.pt"), "tile": 64, "batch": 2,
                      "init": str(files["dir"] / "custom_class.pth")}, "holds Python objects besides weights"),
        ("pretrain", {"rasters": [str(files["four"])], "out": str(tmp_path / "e.pt"), "tile": 64, "batch": 2,
                      "encoder_weights": "imagenet", "encoder": "resnet50"}, "resnet50-0676ba61.pth"),
    ]
    before = {j["id"] for j in service.get("/jobs").json()["jobs"]}
    for job_type, body, message in cases:
        r = service.post(f"/jobs/{job_type}", body)
        assert r.status_code == 422, (job_type, body, r.text)
        assert message in json.dumps(r.json()["detail"]), (message, r.text)
        assert "Traceback" not in r.text
    assert {j["id"] for j in service.get("/jobs").json()["jobs"]} == before  # nothing was queued
    schema = service.get("/info").json()["job_types"]["finetune"]["schema"]["properties"]
    assert "encoder_weights" in schema and "torchvision/timm/torchgeo" in schema["init"]["description"]
