"""Perturbation at patch granularity (deletion, insertion, MoRF/LeRF, ABPC, ROAD): whole patches
ranked by their mean saliency and removed whole; patch size 1 is pixel order bit for bit."""

from __future__ import annotations

import pytest
import torch

from harness import metrics
from harness.metrics import Unit, get_metric
from harness.metrics.causal import CurveSettings, patch_ranks
from harness.metrics.road import RoadSettings
from tests.tiny_transformers import images, tiny_vit


class InputRecorder(torch.nn.Module):
    """Keeps every input it scores; zero logits for 3 classes."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 3)


def test_patch_ranks_closed_form():
    # 4 x 4 map, 2 x 2 patches with means [[1, 3], [3, 0]]: order patch 1, patch 2 (a tie, the
    # lower index first), patch 0, patch 3; each patch's pixels in row-major order inside it
    saliency = torch.tensor([[[1., 1., 3., 3.],
                              [1., 1., 2., 4.],
                              [3., 3., 0., 0.],
                              [3., 3., 0., 0.]]])
    expected = torch.tensor([[[8, 9, 0, 1],
                              [10, 11, 2, 3],
                              [4, 5, 12, 13],
                              [6, 7, 14, 15]]]).view(1, 16)
    assert torch.equal(patch_ranks(saliency, 2), expected)
    least = torch.tensor([[[4, 5, 8, 9], [6, 7, 10, 11], [12, 13, 0, 1], [14, 15, 2, 3]]])
    assert torch.equal(patch_ranks(saliency, 2, descending=False), least.view(1, 16))


@pytest.mark.parametrize("metric", ["deletion", "insertion", "morf", "lerf"])
def test_patch_size_one_is_pixel_order_bit_for_bit(metric, tiny_cnn):
    x = images(2)[:, :, :16, :16]
    saliency = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    function = getattr(metrics, metric)
    pixel = function(tiny_cnn, x, saliency, [0, 2], step=7)
    patch = function(tiny_cnn, x, saliency, [0, 2], step=7, patch=1)
    assert torch.equal(patch.curves, pixel.curves) and torch.equal(patch.auc, pixel.auc)
    assert patch.patch == 1 and pixel.patch is None


@pytest.mark.parametrize("step", [1, 3, 16])
def test_every_deletion_input_removes_whole_patches_in_order(step):
    """Point k of an image is the image with its k * step highest-mean patches set to the
    substrate (written out patch by patch)."""
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    saliency = torch.rand(2, 16, 16, generator=generator)
    recorder = InputRecorder()
    result = metrics.deletion(recorder, x, saliency, [0, 1], step=step, patch=4,
                              memory_format="contiguous")
    seen = torch.cat(recorder.seen)
    n_points = -(-16 // step) + 1
    assert result.curves.shape == (2, n_points) and seen.shape[0] == 2 * n_points
    assert result.fractions.tolist() == [min(k * step, 16) / 16 for k in range(n_points)]
    for i in range(2):
        means = [float(saliency[i, r:r + 4, c:c + 4].mean()) for r in range(0, 16, 4)
                 for c in range(0, 16, 4)]
        order = sorted(range(16), key=lambda p: (-means[p], p))
        for k in range(n_points):
            expected = x[i].clone()
            for p in order[:k * step]:
                row, col = divmod(p, 4)
                expected[:, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = 0  # the zero substrate
            assert torch.equal(seen[i * n_points + k], expected), (i, k)


def test_patch_option_errors(tiny_cnn):
    x, saliency = images(1)[:, :, :12, :12], torch.rand(1, 12, 12)
    with pytest.raises(ValueError, match="patch 5 does not divide the 12 x 12 input"):
        metrics.deletion(tiny_cnn, x, saliency, [0], step=1, patch=5)
    with pytest.raises(ValueError, match=r"step must be an integer in \[1, 9\] \(patches of 4 x 4"):
        metrics.deletion(tiny_cnn, x, saliency, [0], step=10, patch=4)
    with pytest.raises(ValueError, match="patch must be a positive integer"):
        metrics.insertion(tiny_cnn, x, saliency, [0], step=1, patch=0)
    for settings in (CurveSettings, RoadSettings):
        with pytest.raises(ValueError, match="patch: a positive integer"):
            settings(patch="patches").check()
        settings(patch="model").check()


def test_road_patch_size_one_is_pixel_order_and_patches_are_removed_whole(tiny_cnn):
    x = images(2)[:, :, :16, :16]
    saliency = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(3))
    for order in ("morf", "lerf"):
        pixel = metrics.road(tiny_cnn, x, saliency, [0, 1], order=order, imputer="mean")
        same = metrics.road(tiny_cnn, x, saliency, [0, 1], order=order, imputer="mean", patch=1)
        assert torch.equal(same.probs, pixel.probs) and torch.equal(same.correct, pixel.correct)
    # which pixels does ROAD with patches remove? the zero imputer writes -mean/std into them
    recorder = InputRecorder()
    info = tiny_cnn.harness_info
    fill = torch.tensor([-m / s for m, s in zip(info.mean, info.std, strict=True)])
    # patch means far apart (the 1e-4 tie-break map cannot reorder them): patch p has mean p
    ramp = torch.arange(16.0).view(4, 4).repeat_interleave(4, 0).repeat_interleave(4, 1)
    result = metrics.road(recorder, x, ramp.expand(2, 16, 16), [0, 1], order="morf",
                          imputer="zero", patch=4, percentages=(0.25, 0.5),
                          pixel_mean=info.mean, pixel_std=info.std)
    assert result.patch == 4 and result.removed_fraction.tolist() == [0.25, 0.5]
    perturbed = torch.cat(recorder.seen)[2:]  # after the clean batch
    for k, count in enumerate((4, 8)):  # int(16 patches * p), the highest means first
        removed = (perturbed[2 * k:2 * k + 2] == fill.view(1, 3, 1, 1)).all(dim=1)
        expected = (ramp >= 16 - count).expand(2, 16, 16)
        assert torch.equal(removed, expected), count


def test_registry_entries_take_the_models_patch_size():
    vit = tiny_vit()
    x = images(2)
    unit = Unit(model=vit, x=x, target=torch.tensor([0, 1]), ids=("a", "b"), method="rollout")
    records = get_metric("deletion").fn(unit, CurveSettings(step=4, patch="model"))
    assert [r["patch"] for r in records] == [8, 8] and len(records[0]["curve"]) == 5
    direct = metrics.deletion(vit, x, unit.maps, [0, 1], step=4, patch=8)
    assert [r["value"] for r in records] == direct.auc.tolist()
    road = get_metric("road").fn(unit, RoadSettings(patch=8, imputer="mean"))
    assert {r["patch"] for r in road} == {8}
    pixel = get_metric("deletion").fn(unit, CurveSettings(step=256))
    assert "patch" not in pixel[0]
    from harness.models import attach_info, prepare
    from tests.conftest import TinyCNN

    cnn = prepare(attach_info(TinyCNN(), num_classes=5, input_size=32))
    unit = Unit(model=cnn, x=x, target=torch.tensor([0, 1]), ids=("a", "b"), method="sobel")
    with pytest.raises(ValueError, match="patch: 'model', but 'TinyCNN' declares no patch size"):
        get_metric("lerf").fn(unit, CurveSettings(step=4, patch="model"))
