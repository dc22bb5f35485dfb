"""Tests for the method registry, the DeepLabV3+ feature taps and GLCNet / SimCLR end to end."""

from __future__ import annotations

import copy
import json

import pytest
import segmentation_models_pytorch as smp
import torch
from geossl.methods import METHODS, PretrainMethod, get_method, method_names
from geossl.methods.base import deeplab_features
from geossl.methods.glcnet import GLCNet, style_vector
from geossl.methods.simclr import SimCLR

VIEW = 64
SMALL = 48  # for tests that only need a working forward pass


def deeplab(bands: int) -> smp.DeepLabV3Plus:
    torch.manual_seed(0)
    return smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, in_channels=bands, classes=3)


def tiles(bands: int, size: int = 80, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, bands, size, size, generator=torch.Generator().manual_seed(1))


def grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    return float(sum(g.abs().sum() for g in grads)) if grads else 0.0


def test_registry_lists_methods_and_rejects_unknown() -> None:
    assert method_names()[0] == "glcnet" and "simclr" in method_names()
    assert get_method("GLCNet") is GLCNet and get_method("simclr") is SimCLR
    assert all(issubclass(cls, PretrainMethod) and cls.name == key for key, cls in METHODS.items())
    with pytest.raises(ValueError, match="glcnet"):
        get_method("byol-typo")


@pytest.mark.parametrize("name", ["glcnet", "simclr"])
def test_options_are_json_and_validated(name: str) -> None:
    cls = get_method(name)
    defaults = cls.default_options()
    assert json.loads(json.dumps(defaults)) == defaults
    method = cls(deeplab(4), VIEW, temperature=0.2)
    assert method.options == {**defaults, "temperature": 0.2}
    with pytest.raises(TypeError, match="unknown options"):
        cls(deeplab(4), VIEW, temprature=0.2)
    with pytest.raises(ValueError, match="multiple of 16"):
        cls(deeplab(4), 72)


def test_feature_taps_replay_the_smp_decoder() -> None:
    model = deeplab(4).eval()  # eval: the ASPP dropout would make two passes differ
    x = torch.randn(2, 4, SMALL, SMALL)
    with torch.no_grad():
        feats = deeplab_features(model, x)
        reference = model.decoder(model.encoder(x))
    torch.testing.assert_close(feats.decoder, reference)
    assert feats.aspp.shape == (2, 256, SMALL // 16, SMALL // 16)
    assert feats.decoder.shape == (2, 256, SMALL // 4, SMALL // 4)


def test_style_vector_is_mean_and_unbiased_variance() -> None:
    f = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # channels [0,1,2,3] and [4,5,6,7]
    # mean 1.5 / 5.5; unbiased variance ((1.5² + 0.5²) * 2) / 3 = 5/3 for both.
    torch.testing.assert_close(style_vector(f), torch.tensor([[1.5, 5.5, 5 / 3, 5 / 3]]))
    assert style_vector(f.half()).dtype == torch.float32


@pytest.mark.parametrize("bands", [4, 13])
def test_glcnet_forward_backward_reaches_encoder_and_decoder(bands: int) -> None:
    method = GLCNet(deeplab(bands), VIEW)
    loss, logs = method(tiles(bands), torch.Generator().manual_seed(2))
    assert torch.isfinite(loss) and loss.ndim == 0
    assert set(logs) == {"loss", "loss_global", "loss_local", "regions_valid"}
    assert logs["loss"] == pytest.approx(0.5 * logs["loss_global"] + 0.5 * logs["loss_local"], rel=1e-5)
    assert logs["regions_valid"] > 0.5
    loss.backward()
    assert grad_norm(method.model.encoder) > 0
    assert grad_norm(method.model.decoder) > 0


@pytest.mark.parametrize("bands", [4, 13])
def test_simclr_forward_backward_trains_the_encoder_only(bands: int) -> None:
    method = SimCLR(deeplab(bands), VIEW)
    loss, logs = method(tiles(bands), torch.Generator().manual_seed(3))
    assert torch.isfinite(loss) and set(logs) == {"loss"}
    loss.backward()
    assert grad_norm(method.model.encoder) > 0
    assert grad_norm(method.model.decoder) == 0


@pytest.mark.parametrize(
    ("options", "expected_logs"),
    [
        ({"use_local": False}, {"loss", "loss_global"}),
        ({"use_global": False}, {"loss", "loss_local", "regions_valid"}),
        ({"use_style": False, "region_mode": "same_size"}, {"loss", "loss_global", "loss_local", "regions_valid"}),
    ],
)
def test_glcnet_ablations(options: dict, expected_logs: set[str]) -> None:
    method = GLCNet(deeplab(4), SMALL, **options)
    loss, logs = method(tiles(4, size=56, batch=3), torch.Generator().manual_seed(4))
    assert set(logs) == expected_logs and torch.isfinite(loss)
    if "loss_global" in logs and "loss_local" not in logs:
        assert logs["loss"] == pytest.approx(logs["loss_global"])
    loss.backward()
    if not options.get("use_local", True):
        assert method.local_head is None and grad_norm(method.model.decoder.block2) == 0


def test_glcnet_rejects_switching_everything_off() -> None:
    with pytest.raises(ValueError):
        GLCNet(deeplab(4), VIEW, use_global=False, use_local=False)


def test_glcnet_survives_when_most_regions_cannot_be_placed() -> None:
    # 30-px regions in 48-px views: at most one region fits per view, so most are invalid.
    method = GLCNet(deeplab(4), SMALL, region_size=30)
    loss, logs = method(tiles(4, size=56), torch.Generator().manual_seed(5))
    assert logs["regions_valid"] <= 0.25 and torch.isfinite(loss)
    loss.backward()


def test_same_generator_same_loss() -> None:
    # Augmentations and regions follow the generator; the ASPP dropout follows torch's global RNG,
    # which the training loop seeds.
    method = GLCNet(deeplab(4), SMALL)
    twin = copy.deepcopy(method)
    batch = tiles(4, size=56, batch=3)
    results = []
    for m in (method, twin):
        torch.manual_seed(6)
        results.append(m(batch, torch.Generator().manual_seed(7)))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_glcnet_reduce_after_pooling_equals_pooling_the_reduced_map() -> None:
    """GLCNet pools 256-channel decoder features and then applies its 1×1 conv: it must give what
    the paper's order (1×1 conv on the dense map, upsample, pool) gives, for non-empty regions."""
    from geossl.regions import region_pool

    torch.manual_seed(0)
    method = GLCNet(smp.DeepLabV3Plus("resnet18", encoder_weights=None, in_channels=3, classes=2), 64)
    dense = torch.randn(2, method.local_reduce.in_channels, 16, 16)
    masks = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    masks[:, 0, 4:20, 8:30] = True
    masks[:, 1, 30:60, 2:12] = True
    masks[1, 2, 0:64, 60:64] = True  # sample 0's third region stays empty
    paper = region_pool(method.local_reduce(dense), masks)
    ours = method.reduce(region_pool(dense, masks))
    nonempty = masks.flatten(2).any(-1)
    torch.testing.assert_close(ours[nonempty], paper[nonempty], rtol=1e-5, atol=1e-5)
