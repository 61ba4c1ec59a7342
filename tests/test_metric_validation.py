"""Validation in one place for the metrics: each pure function checks its settings arguments by
building its registry settings dataclass and running the same ``check()`` a config runs, so the
two cannot disagree, and their defaults cannot drift apart."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from harness.config import from_dict
from harness.errors import ConfigError
from harness.metrics import METRICS, get_metric
from harness.models import attach_info
from harness.settings import check

# the modules (``harness.metrics`` exports functions of the same names as some modules)
causal, complexity, correlation, infidelity, irof, localisation, robustness, road = (
    importlib.import_module(f"harness.metrics.{name}") for name in (
        "causal", "complexity", "correlation", "infidelity", "irof", "localisation",
        "robustness", "road"))

# every metric below has a pure function of its name taking settings keywords; a new metric
# module with such a function is picked up by the test automatically (these must be among them)
EXPECTED = {"deletion", "insertion", "lerf", "infidelity", "faithfulness_correlation", "irof",
            "average_drop", "increase_in_confidence", "road", "max_sensitivity",
            "avg_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
            "effective_complexity", "pointing_game", "attribution_localisation",
            "top_k_intersection"}


def _comparable(value):
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value


def _pure_functions() -> dict:
    """{metric: (pure function, settings class)} for every metric of ``harness.metrics`` whose
    module exposes a function of the metric's name sharing keywords with its settings."""
    found = {}
    for name in sorted(METRICS):
        entry = get_metric(name)
        if not entry.fn.__module__.startswith("harness.metrics."):
            continue
        function = getattr(sys.modules[entry.fn.__module__], name, None)
        if not callable(function) or function is entry.fn:
            continue
        keywords = {p.name for p in inspect.signature(function).parameters.values()
                    if p.default is not p.empty}
        if keywords & {f.name for f in dataclasses.fields(entry.settings)}:
            found[name] = (function, entry.settings)
    return found


def test_function_defaults_equal_the_settings_defaults():
    found = _pure_functions()
    assert EXPECTED <= set(found), sorted(EXPECTED - set(found))
    for name, (function, settings) in found.items():
        fields = {f.name: f for f in dataclasses.fields(settings)}
        shared = 0
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name not in fields or parameter.default is parameter.empty:
                continue
            spec = fields[parameter.name]
            default = (spec.default if spec.default is not dataclasses.MISSING
                       else spec.default_factory())
            assert _comparable(parameter.default) == _comparable(default), (name, spec.name)
            shared += 1
        assert shared >= 1, name


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = attach_info(Tiny().eval(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        input_size=16, num_classes=5)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(2))
    return model, x, maps


# settings that a config refused and the pure function accepted (or the reverse), or that both
# accepted and then crashed or computed nonsense; each is now refused by both, with the same
# message (the function runs the settings' check)
DISAGREEMENTS = [
    ("irof", {"compactness": True}, "compactness: must be a finite number > 0, got True"),
    ("irof", {"sigma": True}, "sigma: must be a finite number >= 0, got True"),
    ("infidelity", {"noise": True}, "noise: must be a finite number > 0, got True"),
    ("infidelity", {"scaling": 1}, "scaling: must be true or false, got 1"),
    ("deletion", {"step": 2.5}, r"step: must be an integer >= 1, got 2.5"),
    ("deletion", {"batch_size": 2.5}, r"batch_size: must be an integer >= 1"),
    ("deletion", {"substrate": {"sigma": 2}}, "substrate: .* needs a 'name'"),
    ("max_sensitivity", {"radius": True}, "radius: must be a finite number > 0, got True"),
    ("max_sensitivity", {"n_samples": True}, "n_samples: must be an integer >= 1, got True"),
    ("max_sensitivity", {"batch_size": 2.5}, "batch_size: must be an integer >= 1"),
    ("max_sensitivity", {"same_prediction": "yes"}, "same_prediction: must be true or false"),
    ("local_lipschitz_estimate", {"normalise": "yes"}, "normalise: must be true or false"),
    ("relative_input_stability", {"p": True}, "p: must be a finite number > 0, got True"),
    ("effective_complexity", {"eps": float("inf")}, "eps: must be a finite number >= 0"),
    ("effective_complexity", {"normalise": 0}, "normalise: must be true or false, got 0"),
    ("pointing_game", {"tolerance": True}, "tolerance: must be an integer >= 0, got True"),
    ("top_k_intersection", {"k": True}, "k: must be an integer >= 1, got True"),
    ("attribution_localisation", {"weighted": 1}, "weighted: must be true or false, got 1"),
    ("road", {"noise": float("inf")}, "noise: must be a finite number >= 0, got inf"),
]


def _call(name: str, settings: dict, tiny):
    model, x, maps = tiny
    target = [0, 1]
    mask = maps > 0.5
    calls = {
        "irof": lambda: irof.irof(model, x, maps, target, **settings),
        "infidelity": lambda: infidelity.infidelity(model, x, maps, target, n_perturbations=4,
                                                    **settings),
        "deletion": lambda: causal.deletion(model, x, maps, target, **settings),
        "max_sensitivity": lambda: robustness.max_sensitivity(model, "vanilla", x, target,
                                                              **settings),
        "local_lipschitz_estimate": lambda: robustness.local_lipschitz_estimate(
            model, "vanilla", x, target, **settings),
        "relative_input_stability": lambda: robustness.relative_input_stability(
            model, "vanilla", x, target, **settings),
        "effective_complexity": lambda: complexity.effective_complexity(maps, **settings),
        "pointing_game": lambda: localisation.pointing_game(maps, mask, **settings),
        "top_k_intersection": lambda: localisation.top_k_intersection(maps, mask, **settings),
        "attribution_localisation": lambda: localisation.attribution_localisation(
            maps, mask, **settings),
        "road": lambda: road.road(model, x, maps, target, **settings),
    }
    return calls[name]()


@pytest.mark.parametrize(("name", "settings", "message"), DISAGREEMENTS)
def test_function_and_settings_refuse_the_same_values(tiny, name, settings, message):
    with pytest.raises(ConfigError, match=message):
        _call(name, settings, tiny)
    with pytest.raises(ConfigError, match=message):
        check(dataclasses.replace(get_metric(name).settings(), **settings))
    raw = {"name": "t", "methods": ["vanilla"], "metrics": {name: settings}}
    with pytest.raises(ConfigError, match=rf"metrics\.{name}\.{next(iter(settings))}: "):
        from_dict(raw)  # a config refuses it too (by type or by the same check)


def test_settings_errors_are_config_errors_and_compute_errors_metric_errors(tiny):
    from harness.errors import MetricError

    model, x, maps = tiny
    with pytest.raises(ConfigError, match="score: 'p' is not one of: prob, logit"):
        correlation.faithfulness_correlation(model, x, maps, [0, 1], score="p", n_subsets=3)
    with pytest.raises(MetricError, match="target 7 of image b is out of range: the model has 5 "
                                          r"classes \(0..4\)"):
        correlation.faithfulness_correlation(model, x, maps, [0, 7], n_subsets=3, ids=["a", "b"])
    with pytest.raises(MetricError, match="target 9 of image #0 is out of range"):
        road.road(model, x, maps, [9, 1])
    with pytest.raises(MetricError, match="target 6 of image #1 is out of range"):
        causal.deletion(model, x, maps, [0, 6], step=64)
    with pytest.raises(ConfigError, match=r"step: must be an integer in \[1, 256\], got 257"):
        causal.deletion(model, x, maps, [0, 1], step=257)  # beyond the input's pixels
