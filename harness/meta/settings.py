"""The ``meta:`` section of an experiment config (read by ``harness meta CONFIG``; ``harness run``
validates it and ignores it). Defaults are MetaQuantus': ``MetaEvaluation(iterations=5,
nr_perturbations=10)`` and its ImageNet test suite (``helpers/configs.py``
``setup_test_suite("ImageNet")``): model resilience N(1, 0.001^2), model adversary N(1, 0.5^2)
multiplicative weight noise; input resilience U(-0.001, 0.001), input adversary U(-5, 5) additive
noise in the model's input space.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError
from harness.registry import did_you_mean
from harness.settings import build, check, check_int, check_number

SPACES = ("model", "input")


@dataclass(frozen=True)
class MetaSettings:
    n_perturbations: int = 10  # K, perturbations per iteration (MetaQuantus' nr_perturbations)
    iterations: int = 5
    tests: tuple[str, ...] = SPACES  # perturbation spaces: model, input
    model_resilience_std: float = 0.001  # std of the multiplicative N(1, std^2) weight noise
    model_adversary_std: float = 0.5
    input_resilience_noise: float = 0.001  # half-width of the additive U(-noise, noise)
    input_adversary_noise: float = 5.0
    metrics: tuple[str, ...] | None = None  # the config's metrics to meta-evaluate (None: all)
    methods: tuple[str, ...] | None = None  # the config's methods (display names; None: all)
    output_dir: str | None = None  # default: <output_dir>-meta (beside the run's folder)

    def check(self) -> None:
        """``ConfigError("field: why")`` for values out of range."""
        for name in ("n_perturbations", "iterations"):
            check_int(name, getattr(self, name), 1)
        tests = list(self.tests)
        if not tests or any(t not in SPACES for t in tests) or len(set(tests)) != len(tests):
            raise ConfigError(f"tests: {tests!r} must be a non-empty list of distinct values "
                              f"from: {', '.join(SPACES)}")
        for name in ("model_resilience_std", "model_adversary_std", "input_resilience_noise",
                     "input_adversary_noise"):  # MetaQuantus asserts non-zero noise
            check_number(name, getattr(self, name), 0, low_open=True)
        if self.metrics is not None and not list(self.metrics):
            raise ConfigError("metrics: an empty list meta-evaluates nothing; omit the key for "
                              "every metric of the config")
        if self.methods is not None and len(list(self.methods)) < 2:
            raise ConfigError("methods: IEC compares the methods' ranking: name two or more, or "
                              "omit the key for every method of the config")

    def noise(self, space: str, kind: str) -> float:
        """The noise level of a test: ``space`` model/input, ``kind`` resilience/adversary."""
        return getattr(self, f"{space}_{kind}_{'std' if space == 'model' else 'noise'}")


def meta_settings(raw, metrics: dict | None = None, methods: list[str] | None = None
                  ) -> MetaSettings:
    """Validate the raw ``meta:`` mapping (``harness.settings.build`` then ``check``: one
    validation path); ``meta.metrics`` and ``meta.methods`` must name metrics (``metrics``) and
    methods (display names, ``methods``) of the config.

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range, named ``meta.<key>``.
    """
    settings = check(build(MetaSettings, raw, "meta"), "meta")
    for field, chosen, valid in (("metrics", settings.metrics, metrics),
                                 ("methods", settings.methods, methods)):
        if valid is None:
            continue
        for name in chosen or []:
            if name not in valid:
                raise ConfigError(f"meta.{field}: {name!r} is not a {field[:-1]} of this "
                                  f"config.{did_you_mean(name, list(valid))} Valid: "
                                  f"{', '.join(valid)}")
    return settings
