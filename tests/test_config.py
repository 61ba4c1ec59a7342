"""Config loading and validation: errors name the key path, before any compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, apply_overrides, from_dict, load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
MINIMAL = {"name": "t", "methods": ["vanilla"], "metrics": {"deletion": {"step": 100}}}


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_document_themselves(path):
    config = load_config(path)
    assert config.methods and config.metrics
    head = path.read_text().splitlines()[:12]
    assert head[0].startswith("#"), "a config starts with a comment"
    comment = " ".join(head).lower()
    assert "harness run" in comment and "runtime" in comment and "expected" in comment


def test_typo_is_named_before_any_model_is_loaded(tmp_path, monkeypatch):
    import harness.models

    def forbidden(*args, **kwargs):
        raise AssertionError("the model must not be loaded for an invalid config")

    monkeypatch.setattr(harness.models, "load_model", forbidden)
    raw = dict(MINIMAL, modle={"name": "squeezenet1_1"})
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"modle: unknown key. Did you mean 'model'\? Valid "
                                          r"keys at the top level: name, methods, model"):
        load_config(path)
    from harness.cli import main

    assert main(["run", str(path)]) == 2


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "squeezenet11"}}, r"model.name: unknown model 'squeezenet11'"),
    ({"model": {"nmae": "x"}},
     r"model.nmae: unknown key. Did you mean 'name'\? Valid keys here: name, weights"),
    ({"methods": ["vanila"]},
     r"methods\[0\].name: unknown method 'vanila'. Did you mean 'vanilla'\? Valid methods: "
     r"attention_gradcam, blurred"),
    ({"methods": [{"name": "sg", "method": "smoothgrad", "params": {"nn": 3}}]},
     r"methods\[0\].params.nn: unknown key. Did you mean 'n'\? Valid keys here: base, "
     r"base_params, n, noise"),
    ({"methods": [{"name": "smoothgrad", "params": {"base": "ig"}}]},
     r"methods\[0\].params.base: unknown method 'ig'"),
    ({"methods": ["vanilla", "vanilla"]}, r"display name 'vanilla' is used twice"),
    ({"metrics": {"delete": {}}},
     r"metrics: unknown metric 'delete'. Did you mean 'deletion'\? Valid metrics: .*deletion"),
    ({"metrics": {"deletion": {"step": "224"}}}, r"metrics.deletion.step: expected int, got '224'"),
    ({"metrics": {"deletion": {"substrate": "grey"}}},
     r"metrics.deletion.substrate: 'grey' is not one of: blur, mean, rise_blur"),
    ({"metrics": {"model_randomization": {"mode": "cascade"}}},
     r"metrics.model_randomization.mode: 'cascade' is not one of: cascading, independent"),
    ({"metrics": {"model_randomization": {"methods": ["gradcam"]}}},
     r"metrics.model_randomization.methods: 'gradcam' is not one of: vanilla"),
    ({"target": "true"}, r"target: 'true' is not one of: label, predicted"),
    ({"ci_method": "bc"}, r"ci_method: 'bc' is not one of: bca, percentile"),
    ({"reference": "smoothgrad"}, r"reference: 'smoothgrad' is not one of: vanilla"),
    ({"data": {"name": "imagenet"}}, r"data.name: 'imagenet' is not one of: cs231n_npz"),
    ({"batch_size": True}, r"batch_size: expected int, got True"),
    ({"tracking": {"enabled": "yes"}}, r"tracking.enabled: expected bool, got 'yes'"),
])
def test_bad_configs_name_the_key_and_choices(change, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**MINIMAL, **change})


def test_method_entries_and_repeated_methods_with_display_names():
    config = from_dict({**MINIMAL, "methods": [
        "vanilla",
        {"name": "sg_low", "method": "smoothgrad", "params": {"noise": 0.05}},
        {"name": "sg_high", "method": "smoothgrad", "params": {"noise": 0.3}},
        {"name": "sg_ig", "method": "smoothgrad",
         "params": {"base": "integrated_gradients", "base_params": {"n_steps": 8}}},
    ]})
    assert [m.registry_name for m in config.methods] == ["vanilla", *["smoothgrad"] * 3]
    with pytest.raises(ConfigError, match=r"methods\[0\].params.base_params.steps: unknown key. "
                                          r"Did you mean 'n_steps'\?"):
        from_dict({**MINIMAL, "methods": [{"name": "smoothgrad", "params": {
            "base": "integrated_gradients", "base_params": {"steps": 8}}}]})


def test_overrides():
    raw = {**MINIMAL, "methods": ["vanilla", {"name": "smoothgrad", "params": {"n": 50}}]}
    changed = apply_overrides(raw, ["data.limit=2", "methods.1.params.n=10",
                                    "tracking.enabled=false", "data.options={names: [coffee]}"])
    config = from_dict(changed)
    assert config.data.limit == 2 and config.methods[1].params == {"n": 10}
    assert config.tracking.enabled is False and config.data.options == {"names": ["coffee"]}
    assert raw["methods"][1]["params"]["n"] == 50, "the raw mapping is not modified"
    with pytest.raises(ConfigError,
                       match=r"--set methods.5.params.n: '5' is not an index of a list of 2"):
        apply_overrides(raw, ["methods.5.params.n=1"])
    with pytest.raises(ConfigError, match="expected path.to.key=value"):
        apply_overrides(raw, ["data.limit"])


def test_methods_are_addressable_by_display_name():
    raw = {**MINIMAL, "methods": ["vanilla", {"name": "sg_low", "method": "smoothgrad",
                                              "params": {"n": 50}}]}
    config = from_dict(apply_overrides(raw, ["methods.sg_low.params.n=5",
                                             "methods.vanilla.params.reduce=abs_sum"]))
    assert config.methods[1].params == {"n": 5}
    assert config.methods[0].params == {"reduce": "abs_sum"}, "a method given by name alone"
    with pytest.raises(ConfigError, match=r"--set methods.sg_hi.params.n: no method named "
                                          r"'sg_hi'. Methods: vanilla, sg_low \(or an index "
                                          r"0..1\)"):
        apply_overrides(raw, ["methods.sg_hi.params.n=5"])


def test_smoke_shrinks_any_config_to_a_quick_try():
    config = load_config(EXPERIMENTS / "quickstart.yaml", smoke_run=True)
    assert config.smoke and config.data.limit == 2 and config.figure_images == 2
    assert config.name == "quickstart-smoke" and config.output_dir.endswith("-smoke")
    params = {m.name: m.params for m in config.methods}
    assert params["smoothgrad"]["n"] == 4 and params["blurred"] == {"sigma": 2.0}
    assert config.metrics["deletion"].step == 224 * 28
    assert config.metrics["road"].percentages == [0.1, 0.4, 0.9]
    full = load_config(EXPERIMENTS / "quickstart.yaml")
    assert full.hash() != config.hash() and not full.smoke
    assert load_config(EXPERIMENTS / "quickstart.yaml", ["data.limit=1"],
                       smoke_run=True).data.limit == 1, "only lowered"


def test_config_hash_ignores_tracking_and_output_only():
    a = from_dict(MINIMAL)
    assert a.hash() == from_dict({**MINIMAL, "output_dir": "elsewhere",
                                  "tracking": {"enabled": False}}).hash()
    assert a.hash() != from_dict({**MINIMAL, "seed": 1}).hash()


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
