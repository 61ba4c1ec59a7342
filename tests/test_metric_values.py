"""The values of the model-calling metrics, recorded before their speed work: the batched and
chunked paths must give the numbers the earlier code gave.

``tests/snapshots/metric_values.json`` was written by this module's ``record()`` (``python -m
tests.test_metric_values``) at commit 1398786 plus the validation-only changes of issue 19 (no
value changed there), BEFORE the sensitivity family, faithfulness correlation, IROF and
infidelity were batched differently (issue 25). Each case runs with explicit chunk sizes and with
the defaults. Values compare to a relative 1e-6: a convolution evaluated in a batch of a
different size (or another memory layout) may round its last bits differently, which is the only
change allowed; every random draw, ordering and reduction must be the one recorded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import harness
from harness import metrics
from harness.models import attach_info

from .conftest import TinyCNN

SNAPSHOT = Path(__file__).parent / "snapshots" / "metric_values.json"
IDS = ["a", "b", "c"]


def _model(size: int = 16):
    return harness.models.prepare(attach_info(TinyCNN(seed=3), num_classes=5, input_size=size))


def _inputs(size: int = 16):
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))
    maps = torch.randn(3, size, size, generator=torch.Generator().manual_seed(8))
    return x, maps


def _robustness(metric: str, method: str = "vanilla", **options):
    def run():
        model = _model()
        x, _ = _inputs()
        result = getattr(metrics, metric)(model, method, x, [0, 1, 2], ids=IDS, seed=5,
                                          **options)
        return {"values": result.values, "samples": result.samples, "kept": result.kept}
    return run


def _perturbation(metric: str, size: int = 16, **options):
    def run():
        model = _model(size)
        x, maps = _inputs(size)
        result = getattr(metrics, metric)(model, x, maps, [0, 1, 2], ids=IDS, **options)
        fields = {"values": result.values}
        for name in ("scaled", "unscaled", "beta", "attribution_sums", "score_drops", "curves",
                     "unnormalised", "clean", "explained"):
            if hasattr(result, name):
                fields[name] = getattr(result, name)
        return fields
    return run


CASES = {
    "max_sensitivity": _robustness("max_sensitivity", n_samples=6, batch_size=4),
    "max_sensitivity_default_batch": _robustness("max_sensitivity", n_samples=6),
    "max_sensitivity_same_prediction": _robustness("max_sensitivity", n_samples=5, batch_size=7,
                                                   same_prediction=True, norm="l1"),
    "max_sensitivity_input_gaussian": _robustness("max_sensitivity", n_samples=4, batch_size=5,
                                                  radius_units="input", noise="gaussian",
                                                  radius=0.3),
    "avg_sensitivity": _robustness("avg_sensitivity", n_samples=6, batch_size=4),
    "avg_sensitivity_smoothgrad": _robustness("avg_sensitivity", "smoothgrad", n_samples=3,
                                              batch_size=2,
                                              method_params={"n": 3, "batch_size": 4}),
    "local_lipschitz_estimate": _robustness("local_lipschitz_estimate", n_samples=6,
                                            batch_size=4),
    "local_lipschitz_normalised": _robustness("local_lipschitz_estimate", "grad_x_input",
                                              n_samples=5, batch_size=16, normalise=True),
    "relative_input_stability": _robustness("relative_input_stability", n_samples=6,
                                            batch_size=4),
    "relative_input_stability_default_batch": _robustness("relative_input_stability",
                                                          n_samples=6),
    "faithfulness_correlation": _perturbation("faithfulness_correlation", n_subsets=9,
                                              subset_size=20, batch_size=4, seed=2),
    "faithfulness_correlation_prob": _perturbation("faithfulness_correlation", n_subsets=7,
                                                   subset_size=50, score="prob", seed=1,
                                                   baseline="mean"),
    "irof": _perturbation("irof", n_segments=8, batch_size=5),
    "irof_default_batch": _perturbation("irof", n_segments=12, baseline="black"),
    "infidelity_gaussian": _perturbation("infidelity", n_perturbations=11, batch_size=4, seed=4),
    "infidelity_gaussian_odd_size": _perturbation("infidelity", size=10, n_perturbations=9,
                                                  seed=4, baseline="zero"),
    "infidelity_square_all": _perturbation("infidelity", size=10, perturbation="square",
                                           square_sizes=(1, 2), batch_size=16),
    "infidelity_square_sampled": _perturbation("infidelity", perturbation="square",
                                               n_perturbations=23, seed=6, score="prob",
                                               scaling=False),
    "average_drop": _perturbation("average_drop", batch_size=2),
    "increase_in_confidence": _perturbation("increase_in_confidence"),
}


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.double().tolist() if value.is_floating_point() else value.tolist()
    return value


def record() -> None:
    """Write the snapshot (only ever from the code BEFORE a speed change; see the docstring)."""
    out = {name: {field: _plain(value) for field, value in case().items()}
           for name, case in CASES.items()}
    SNAPSHOT.write_text(json.dumps(out, indent=1, allow_nan=True) + "\n")


def _close(new, old, where) -> None:
    if isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _close(a, b, f"{where}[{i}]")
        return
    if isinstance(old, float) and math.isnan(old):
        assert isinstance(new, float) and math.isnan(new), where
        return
    assert new == pytest.approx(old, rel=1e-6, abs=1e-12), where


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_are_the_recorded_ones(name):
    recorded = json.loads(SNAPSHOT.read_text())[name]
    fresh = {field: _plain(value) for field, value in CASES[name]().items()}
    assert set(fresh) == set(recorded)
    for field, old in recorded.items():
        _close(fresh[field], old, f"{name}.{field}")


if __name__ == "__main__":
    record()


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 10, 10), (1, 4, 4), (2, 3, 5)])
def test_one_normal_draw_is_the_small_draws_in_order(shape):
    from harness.metrics.infidelity import normal_draws

    generator = torch.Generator().manual_seed(11)
    one_by_one = torch.stack([torch.randn(shape, generator=generator) for _ in range(5)])
    assert torch.equal(normal_draws(torch.Generator().manual_seed(11), 5, shape), one_by_one)


def test_the_layout_hook_changes_no_gradient_and_leaves_no_hook(tiny_cnn):
    from harness.metrics.neighbourhood import model_layout

    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = harness.saliency("vanilla", tiny_cnn, x, [0, 1, 2])
    seen = []
    probe = tiny_cnn.features[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(
            memory_format=torch.channels_last)))
    try:
        with model_layout(tiny_cnn, torch.channels_last):
            converted = harness.saliency("vanilla", tiny_cnn, x, [0, 1, 2])
            gradient = harness.methods.raw_attribution("vanilla", tiny_cnn, x, [0, 1, 2])
    finally:
        probe.remove()
    assert seen == [True, True]  # the model ran on channels_last inputs
    assert gradient.is_contiguous()  # the method's gradient keeps x's layout
    torch.testing.assert_close(converted, plain, rtol=1e-5, atol=1e-7)
    assert not tiny_cnn._forward_pre_hooks  # removed on exit
