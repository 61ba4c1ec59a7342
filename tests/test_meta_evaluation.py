"""Meta-evaluation (MetaQuantus): IAC/IEC/MC equal MetaQuantus' own functions on the same score
arrays, the whole meta-evaluation equals MetaQuantus' on a tiny model with the same perturbations,
the perturbations are seeded and leave the model alone, and the ``meta:`` section is validated.

The oracle is the PyPI package ``metaquantus==0.0.5`` (the ``dev`` extra; it needs ``quantus``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import harness
from harness.config import ConfigError, from_dict
from harness.meta import MetaSettings, iac, iec_adversary, iec_resilience, meta_consistency
from harness.meta.consistency import PerturbationScores, perturbation_scores
from harness.meta.evaluate import KINDS, Batch, evaluate_batches, predictions
from harness.meta.perturb import (
    input_noise,
    model_noise,
    perturb_model,
    perturbation_key,
    perturbed_input,
)
from harness.meta.settings import meta_settings
from harness.models import attach_info
from harness.seeding import image_seed

from .conftest import state_hash

MetaEvaluation = pytest.importorskip("metaquantus").MetaEvaluation


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (on a loaded 2-core machine two threads made these
    tests 10x slower, with the same numbers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def score_arrays(seed: int = 0, methods: int = 4, images: int = 9, iterations: int = 3,
                 k: int = 5):
    """Unperturbed scores, perturbed ones (some equal: zero differences; some ties across
    methods; a NaN), and kept masks (one perturbation keeps no image)."""
    rng = np.random.default_rng(seed)
    q_star = rng.random((methods, images)).round(1)  # ties across methods
    q_hat = q_star + rng.normal(0, 0.2, (iterations, k, methods, images))
    q_hat[0, 0, 0] = q_star[0]  # every difference zero
    q_hat[1, 2, 1, 3] = np.nan
    kept = rng.random((iterations, k, images)) > 0.3
    kept[2, 1] = False  # nothing kept
    kept[2, 2] = False
    kept[2, 2, 4] = True  # a single image
    return q_star, q_hat, kept


def test_iac_and_iec_equal_metaquantus_static_methods():
    q_star, q_hat, kept = score_arrays()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(q_hat.shape[0]):
            for k in range(q_hat.shape[1]):
                for m in range(q_star.shape[0]):
                    for adversarial, name in [(False, "Model Resilience Test"),
                                              (True, "Input Adversary Test")]:
                        ours = iac(q_star[m], q_hat[i, k, m], kept[i, k], adversarial=adversarial)
                        theirs = MetaEvaluation.compute_iac_score(
                            q=q_star[m], q_hat=q_hat[i, k, m], indices=kept[i, k], test_name=name)
                        assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)
                ours = iec_resilience(q_star, q_hat[i, k], kept[i, k])
                theirs = MetaEvaluation.compute_iec_resilience(q_star, q_hat[i, k], kept[i, k])
                assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)
                # lower is better: MetaQuantus' branch for a truthy score_direction
                ours = iec_adversary(q_star, q_hat[i, k], kept[i, k], "down")
                theirs = MetaEvaluation.compute_iec_adversary(q_star, q_hat[i, k], kept[i, k],
                                                              score_direction="lower")
                assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)
                # higher is better: MetaQuantus' else branch (its intended rule; a truthy
                # "higher" takes the other branch there, pull request #10)
                ours = iec_adversary(q_star, q_hat[i, k], kept[i, k], "up")
                theirs = MetaEvaluation.compute_iec_adversary(q_star, q_hat[i, k], kept[i, k],
                                                              score_direction=None)
                assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)


def test_closed_form_cases():
    q = np.array([0.1, 0.4, 0.3, 0.9, 0.5])
    everything = np.ones(5, dtype=bool)
    assert iac(q, q, everything, adversarial=False) == 1.0  # nothing moved: p = 1
    assert iac(q, q, everything, adversarial=True) == 0.0
    q_star = np.array([[1.0, 2.0], [3.0, 0.0]])
    assert iec_resilience(q_star, q_star + 10, np.ones(2, dtype=bool)) == 1.0
    assert iec_resilience(q_star, -q_star, np.ones(2, dtype=bool)) == 0.0
    # lower is better: two of four scores got worse (higher)
    q_hat = np.array([[2.0, 1.0], [4.0, -1.0]])
    assert iec_adversary(q_star, q_hat, np.ones(2, dtype=bool), "down") == 0.5
    assert iec_adversary(q_star, q_hat, np.array([True, False]), "down") == 1.0
    assert np.isnan(iec_adversary(q_star, q_hat, np.zeros(2, dtype=bool), "up"))
    with pytest.raises(ValueError, match="direction"):
        iec_adversary(q_star, q_hat, everything[:2], "sideways")
    ideal = meta_consistency(
        PerturbationScores(np.ones((2, 3, 4)), np.ones((3, 4))),
        PerturbationScores(np.ones((2, 3, 4)), np.ones((3, 4))))
    assert ideal["MC_mean"] == 1.0 and ideal["MC_std"] == 0.0


@pytest.mark.parametrize("direction, score_direction", [("down", "lower"), ("up", None)])
def test_mc_equals_metaquantus_meta_consistency_analysis(direction, score_direction):
    """Intra, inter and MC analysis of MetaQuantus on the same arrays (its own loops)."""
    iterations, k = 3, 5
    methods = ["a", "b", "c", "d"]
    tests = ["Model Resilience Test", "Model Adversary Test", "Input Resilience Test",
             "Input Adversary Test"]
    meta = MetaEvaluation(test_suite={t: None for t in tests},
                          xai_methods={m: {} for m in methods}, iterations=iterations,
                          nr_perturbations=k, write_to_file=False)
    ours = {}
    for index, test in enumerate(tests):
        q_star, q_hat, kept = score_arrays(seed=index, methods=len(methods), iterations=iterations,
                                           k=k)
        q_hat = np.nan_to_num(q_hat, nan=0.5)  # MetaQuantus 0.0.5 averages with .mean (no NaN)
        kept[2, 1] = True
        meta.results_eval_scores[test] = {m: q_star[j] for j, m in enumerate(methods)}
        meta.results_eval_scores_perturbed[test] = {
            i: {m: q_hat[i, :, j] for j, m in enumerate(methods)} for i in range(iterations)}
        meta.results_indices_perturbed[test] = {i: kept[i] for i in range(iterations)}
        ours[test] = perturbation_scores(q_star, q_hat, kept, adversarial="Adversary" in test,
                                         direction=direction)
    meta.results_y_preds = np.zeros(9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta.run_intra_analysis()
        meta.run_inter_analysis(score_direction=score_direction)
        theirs = meta.run_meta_consistency_analysis()
    for space in ("Model", "Input"):
        mine = meta_consistency(ours[f"{space} Resilience Test"], ours[f"{space} Adversary Test"])
        for test in (f"{space} Resilience Test", f"{space} Adversary Test"):
            np.testing.assert_allclose(ours[test].intra, np.stack(
                [meta.results_intra_scores[test][m] for m in methods]), atol=1e-9)
            np.testing.assert_allclose(ours[test].inter, meta.results_inter_scores[test],
                                       atol=1e-9)
        reference = theirs[space]
        assert mine["MC_mean"] == pytest.approx(reference["MC_mean"], abs=1e-9)
        assert mine["MC_std"] == pytest.approx(reference["MC_std"], abs=1e-9)
        np.testing.assert_allclose(mine["MC_means"], reference["MC_means"], atol=1e-9)
        for name in ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR"):
            key = name.replace("_", "_{") + "}"
            np.testing.assert_allclose(mine["scores"][name],
                                       reference["consistency_scores"][key], atol=1e-9)
            assert mine[f"{name}_mean"] == pytest.approx(
                reference["consistency_results"][f"{key} mean"], abs=1e-9)


# ----------------------------------------------------------------------------- the whole thing

METHODS = {"vanilla": {}, "grad_x_input": {}, "random": {"seed": 0}}
DELETION = {"step": 32, "substrate": "zero", "score": "prob"}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """conv-ReLU-flatten-linear on 16 x 16 inputs: its top-1 class varies across random images
    (a globally pooled untrained CNN predicts one class for all)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 5))
    return harness.models.prepare(attach_info(model, num_classes=5, input_size=16))


def tiny_setup(n_images: int = 8):
    model = tiny_model()
    x = torch.randn(n_images, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ids = tuple(f"img{i}" for i in range(n_images))
    config = from_dict({
        "name": "tiny-meta", "model": {"name": "squeezenet1_1"},  # the model is passed in
        "methods": [{"name": name, "params": params} for name, params in METHODS.items()],
        "metrics": {"deletion": DELETION}, "target": "predicted", "batch_size": n_images,
        "tracking": {"enabled": False}})
    return model, x, ids, config


class HarnessDeletion:
    """The harness's deletion as a Quantus-style estimator for MetaQuantus (same metric code on
    both sides: the test compares the meta-evaluation, not the metric)."""

    abs, normalise, normalise_func, normalise_func_kwargs = False, False, None, {}

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, model, x_batch, y_batch, a_batch, explain_func_kwargs, **kwargs):
        from harness.metrics import Unit, get_metric
        from harness.metrics.causal import CurveSettings

        method = explain_func_kwargs["method"]
        unit = Unit(model, torch.as_tensor(x_batch), torch.as_tensor(y_batch), self.ids, method,
                    dict(METHODS[method]), batch_size=len(self.ids))
        unit.__dict__["maps"] = torch.as_tensor(a_batch)[:, 0]
        unit.__dict__["signed_maps"] = None
        records = get_metric("deletion").fn(unit, CurveSettings(**DELETION))
        return [record["value"] for record in records]


def explain(model, inputs, targets, **kwargs):
    """MetaQuantus' explain_func: the harness method (``kwargs["method"]``) -> ``[N, 1, H, W]``."""
    from harness.methods import saliency_batched

    name = kwargs["method"]
    maps = saliency_batched(name, model, torch.as_tensor(inputs), torch.as_tensor(targets),
                            method_params=METHODS[name])
    return maps[:, None].numpy()


@pytest.mark.slow
def test_whole_meta_evaluation_equals_metaquantus_on_a_tiny_model(monkeypatch):
    import gc

    from metaquantus import InputPerturbationTest, ModelPerturbationTest
    from quantus.helpers.model.pytorch_model import PyTorchModel

    # MetaQuantus' gc.collect() calls (three per method and perturbation) cost seconds in a
    # large process and change no number
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    model, x, ids, config = tiny_setup(12)
    settings = MetaSettings(n_perturbations=3, iterations=2, model_adversary_std=1.0,
                            input_adversary_noise=2.0)
    before = state_hash(model)
    target = predictions(model, x)
    result = evaluate_batches(config, settings, model,
                              [Batch(ids, x, (None,) * len(ids), None, target, target)])
    assert state_hash(model) == before, "the model was not modified"

    # the same perturbations, handed to MetaQuantus in the order it draws them
    models, noises = [], []
    for space in ("model", "input"):
        for kind in KINDS:
            for i in range(settings.iterations):
                for k in range(settings.n_perturbations):
                    key = perturbation_key(f"{space}/{kind}", i, k)
                    level = settings.noise(space, kind)
                    if space == "model":
                        models.append(perturb_model(model, level, seed=config.seed, key=key))
                    else:
                        noises.append((level, input_noise(x.shape, level, ids, seed=config.seed,
                                                          key=key).numpy()))
    monkeypatch.setattr(PyTorchModel, "sample", lambda self, mean, std, noise_type: models.pop(0))

    def uniform(low, high, size):
        level, noise = noises.pop(0)
        assert (low, high, tuple(size)) == (-level, level, tuple(noise.shape))
        return noise

    monkeypatch.setattr(np.random, "uniform", uniform)
    suite = {
        "Model Resilience Test": ModelPerturbationTest(
            type="Resilience", noise_type="multiplicative", mean=1.0,
            std=settings.model_resilience_std),
        "Model Adversary Test": ModelPerturbationTest(
            type="Adversary", noise_type="multiplicative", mean=1.0,
            std=settings.model_adversary_std),
        "Input Resilience Test": InputPerturbationTest(type="Resilience",
                                                       noise=settings.input_resilience_noise),
        "Input Adversary Test": InputPerturbationTest(type="Adversary",
                                                      noise=settings.input_adversary_noise)}
    meta = MetaEvaluation(test_suite=suite, xai_methods=METHODS, iterations=settings.iterations,
                          nr_perturbations=settings.n_perturbations, explain_func=explain,
                          write_to_file=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta(estimator=HarnessDeletion(ids), model=model, x_batch=x.numpy(),
             y_batch=target.numpy(), score_direction="lower")  # deletion: lower is better
    assert not models and not noises, "every perturbation was used once"

    assert result.passes == 1 + 4 * 3 * 2
    kept = result.kept
    for space in ("Model", "Input"):
        for kind in KINDS:
            test = f"{space} {kind.capitalize()} Test"
            mine = result.consistency[("deletion", f"{space.lower()}_{kind}")]
            np.testing.assert_allclose(mine.intra, np.stack(
                [meta.results_intra_scores[test][m] for m in METHODS]), atol=1e-9)
            np.testing.assert_allclose(mine.inter, meta.results_inter_scores[test], atol=1e-9)
            for i in range(settings.iterations):
                rows = kept[(kept["test"] == f"{space.lower()}_{kind}") & (kept["iteration"] == i)]
                ours = rows.pivot(index="k", columns="image_id", values="kept")[list(ids)]
                np.testing.assert_array_equal(ours.to_numpy(),
                                              meta.results_indices_perturbed[test][i])
        row = result.summary[result.summary["space"] == space.lower()].iloc[0]
        reference = meta.results_meta_consistency_scores[space]
        # every perturbation kept images in both tests: no NaN, where MetaQuantus 0.0.5's .mean
        # and its later nanmean (which the harness follows) would differ
        assert np.isfinite(reference["MC_mean"])
        assert row["MC"] == pytest.approx(reference["MC_mean"], abs=1e-9)
        for name in ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR"):
            key = name.replace("_", "_{") + "}"
            assert row[f"{name}_mean"] == pytest.approx(
                reference["consistency_results"][f"{key} mean"], abs=1e-9)
    # the disruptive tests changed some predictions and kept others, so every part is exercised
    adversary = kept[kept["test"].str.endswith("adversary")]["kept"]
    assert 0 < adversary.mean() < 1


# ----------------------------------------------------------------------------- perturbations


def test_model_perturbation_is_seeded_multiplicative_and_leaves_the_model_alone():
    model, x, ids, _ = tiny_setup()
    before = state_hash(model)
    first = perturb_model(model, 0.5, seed=0, key="model/adversary/0/0")
    again = perturb_model(model, 0.5, seed=0, key="model/adversary/0/0")
    other = perturb_model(model, 0.5, seed=0, key="model/adversary/0/1")
    assert state_hash(model) == before
    assert state_hash(first) == state_hash(again) != state_hash(other)
    assert first.harness_info == model.harness_info and not first.training
    noise = model_noise(model, 0.5, torch.Generator().manual_seed(
        image_seed(0, "model/adversary/0/0", salt="meta-model")))
    for original, moved, factor in zip(model.parameters(), first.parameters(), noise,
                                       strict=True):
        assert not moved.requires_grad
        assert torch.equal(moved, original * factor), "each weight times its N(1, std^2) draw"
    factors = torch.cat([n.flatten() for n in noise])
    assert abs(float(factors.mean()) - 1) < 0.05 and abs(float(factors.std()) - 0.5) < 0.05
    bn = harness.models.prepare(attach_info(torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2)), num_classes=2, input_size=8))
    with torch.no_grad():
        bn[1].running_mean.fill_(0.3)
    moved = perturb_model(bn, 0.5, seed=0, key="k")
    for buffer, kept in zip(bn.buffers(), moved.buffers(), strict=True):
        assert torch.equal(buffer, kept), "buffers (BatchNorm statistics) are not perturbed"


def test_input_noise_does_not_depend_on_the_batch():
    _, x, ids, _ = tiny_setup()
    whole = input_noise(x.shape, 0.3, ids, seed=0, key="input/resilience/0/0")
    halves = torch.cat([input_noise(x[:3].shape, 0.3, ids[:3], seed=0,
                                    key="input/resilience/0/0"),
                        input_noise(x[3:].shape, 0.3, ids[3:], seed=0,
                                    key="input/resilience/0/0")])
    assert torch.equal(whole, halves) and whole.dtype == torch.float64
    assert float(whole.abs().max()) <= 0.3
    moved = perturbed_input(x, whole, floor=float(x.min()))
    assert moved.dtype == x.dtype and float(moved.min()) >= float(x.min())
    expected = np.clip((x.numpy().astype(np.float64) + whole.numpy()).astype(np.float32),
                       x.numpy().min(), None)
    np.testing.assert_array_equal(moved.numpy(), expected)


# ----------------------------------------------------------------------------- configuration


def test_meta_section_is_validated_and_runs_ignore_it(tmp_path):
    raw = {"name": "m", "methods": ["vanilla", "sobel"], "metrics": {"sparseness": {}},
           "tracking": {"enabled": False}}
    config = from_dict({**raw, "meta": {"n_perturbations": 2, "metrics": ["sparseness"]}})
    assert "meta" not in config.to_dict()
    assert config.hash() == from_dict(raw).hash(), "the meta section is not part of the run"
    settings = meta_settings({"iterations": 2, "tests": ["input"]}, config.metrics)
    assert settings.iterations == 2 and list(settings.tests) == ["input"]
    assert settings.noise("input", "adversary") == 5.0
    assert MetaSettings().n_perturbations == 10 and MetaSettings().iterations == 5
    for bad, message in [({"iteratons": 2},
                          "meta.iteratons: unknown key. Did you mean 'iterations'?"),
                         ({"iterations": 0}, "meta.iterations: must be an integer >= 1"),
                         ({"iterations": "2"}, "meta.iterations: expected int"),
                         ({"tests": ["model", "weights"]}, "meta.tests"),
                         ({"model_adversary_std": 0},
                          "meta.model_adversary_std: must be a finite number > 0"),
                         ({"metrics": ["deletion"]}, "meta.metrics: 'deletion' is not a metric"),
                         ({"metrics": []}, "meta.metrics: an empty list"),
                         ({"methods": ["vanilla", "gradcam"]},
                          "meta.methods: 'gradcam' is not a method"),
                         ({"methods": ["vanilla"]}, "meta.methods: IEC compares")]:
        with pytest.raises(ConfigError, match=bad and message.replace("(", r"\(")):
            from_dict({**raw, "meta": bad})


@pytest.mark.slow  # a real (random-weight) SqueezeNet, 3 passes and MLflow: about 15 s
def test_harness_meta_cli_writes_tables_figure_and_an_mlflow_run(tmp_path, capsys):
    import yaml
    from mlflow.tracking import MlflowClient

    from harness.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {"name": "tiny", "model": {"name": "squeezenet1_1", "weights": "random"},
           "data": {"name": "samples", "options": {"names": ["chelsea", "coffee"]}},
           "methods": ["vanilla", "sobel"], "metrics": {"sparseness": {}, "deletion": {}},
           "output_dir": str(tmp_path / "run"), "tracking": {"uri": uri, "experiment": "meta"},
           "meta": {"n_perturbations": 1, "iterations": 1, "tests": ["model"],
                    "metrics": ["sparseness"]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["meta", str(path), "--no-progress", "--set", "meta.iterations=1"]) == 0
    out = capsys.readouterr().out
    assert "| sparseness ↑ |" in out and "3 passes" in out and "deletion" not in out.split(
        "outputs:")[0]
    folder = tmp_path / "run-meta"
    for name in ("tables/meta.md", "tables/meta.csv", "figures/meta_area.png", "scores.parquet",
                 "kept.csv", "config.resolved.yaml"):
        assert (folder / name).stat().st_size > 0, name
    resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    assert resolved["meta"]["n_perturbations"] == 1
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("meta").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["harness.role"] == "meta-evaluation"
    assert "sparseness.MC" in run.data.metrics and "sparseness.model.IAC_NR" in run.data.metrics
    assert run.data.params["meta.n_perturbations"] == "1"
    assert "tables" in {a.path for a in client.list_artifacts(run.info.run_id)}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "meta": {"iterations": 0}}))
    assert main(["meta", str(bad)]) == 2
    assert "meta.iterations: must be an integer >= 1" in capsys.readouterr().err
