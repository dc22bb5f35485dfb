"""Known-answer tests for the NT-Xent losses and the DDP gather."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from geossl.losses import gather_with_grad, nt_xent, region_nt_xent


def test_two_orthogonal_pairs_by_hand() -> None:
    # z1 = z2 = [e1, e2], tau = 1. Every anchor: positive cos 1, the other sample's two views cos 0.
    #   standard:  -log(e / (e + 1 + 1)) = log(1 + 2/e)
    #   positive excluded from the denominator: -log(e / (1 + 1)) = log 2 - 1
    z = torch.eye(2)
    assert nt_xent(z, z, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    assert nt_xent(z, z, 1.0, exclude_positive=True).item() == pytest.approx(math.log(2) - 1, abs=1e-6)


def _reference(z1: list[list[float]], z2: list[list[float]], tau: float, exclude_positive: bool) -> float:
    """Eq. 3 of the paper written out with plain loops."""
    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    views = z1 + z2
    n = len(z1)
    total = 0.0
    for i, anchor in enumerate(views):
        partner = (i + n) % (2 * n)
        positive = math.exp(cos(anchor, views[partner]) / tau)
        denominator = sum(
            math.exp(cos(anchor, other) / tau)
            for k, other in enumerate(views)
            if k != i and not (exclude_positive and k == partner)
        )
        total += -math.log(positive / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("exclude_positive", [False, True])
def test_three_pairs_against_explicit_formula(exclude_positive: bool) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    expected = _reference(z1.tolist(), z2.tolist(), 0.5, exclude_positive)
    got = nt_xent(z1, z2, 0.5, exclude_positive=exclude_positive)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_cosine_similarity_ignores_scale() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z1 * 7.0, z2 * 0.01))


def test_region_loss_drops_invalid_pairs_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    valid = torch.tensor([True, False, True, True, False, True])
    torch.testing.assert_close(region_nt_xent(z1, z2, valid), region_nt_xent(z1[valid], z2[valid]))
    # The region loss is the positive-excluded NT-Xent.
    torch.testing.assert_close(region_nt_xent(z1, z2), nt_xent(z1, z2, exclude_positive=True))


@pytest.mark.parametrize("valid", [torch.zeros(4, dtype=torch.bool), torch.tensor([False, True, False, False])])
def test_no_usable_anchor_gives_connected_zero(valid: torch.Tensor) -> None:
    # No pair, or a single pair with no negative left once the positive is excluded.
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    loss = region_nt_xent(z1, z2, valid)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z1.grad, torch.zeros_like(z1)) and torch.isfinite(z2.grad).all()


def test_gradients_are_finite_and_loss_is_float32_under_half_inputs() -> None:
    z1 = torch.randn(8, 16).half().requires_grad_()
    z2 = torch.randn(8, 16).half().requires_grad_()
    loss = nt_xent(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(z1.grad.float()).all()


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(4, 4))


def test_gather_is_identity_without_distributed() -> None:
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(3)
        z1_all, z2_all = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
        valid_all = torch.tensor([True, True, False, True])
        rows = slice(2 * rank, 2 * rank + 2)
        z1 = z1_all[rows].clone().requires_grad_()
        z2 = z2_all[rows].clone().requires_grad_()
        loss = region_nt_xent(z1, z2, valid_all[rows])
        loss.backward()
        torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_matches_single_process_global_batch(tmp_path: Path) -> None:
    # Two Gloo processes with two pairs each must see the loss of the 4-pair batch, and each gets
    # world_size x its share of the gradient (DDP then averages over processes).
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(4, 6, generator=g).requires_grad_()
    z2 = torch.randn(4, 6, generator=g).requires_grad_()
    loss = region_nt_xent(z1, z2, torch.tensor([True, True, False, True]))
    loss.backward()
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(2 * rank, 2 * rank + 2)
        torch.testing.assert_close(out["loss"], loss.detach())
        torch.testing.assert_close(out["g1"], 2 * z1.grad[rows])
        torch.testing.assert_close(out["g2"], 2 * z2.grad[rows])
