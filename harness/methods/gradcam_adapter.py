"""pytorch-grad-cam adapter: every CAM class of ``pytorch_grad_cam`` is method
``gradcam:<CAMClass>`` (Gildenblat & contributors, https://github.com/jacobgil/pytorch-grad-cam):
GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, LayerCAM, HiResCAM, ScoreCAM, AblationCAM,
FullGrad, ... The library computes the maps; nothing of its algorithms is written here.

The maps are the library's: per image the ReLU of the CAM, min-max scaled to [0, 1] and resized to
the input (no signed variant). ``layer`` defaults to the model's ``cam_layer`` (a module run
several times is explained at its last call); the library's ``reshape_transform`` comes from the
model's declared layout; ``init`` / ``call`` hold extra keywords.

Parameters, hook release, seeding and what is not offered: docs/howto/method.md (Adapters) and
docs/transformers.md (layouts).
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import nn

from harness.errors import ConfigError
from harness.layouts import model_layout, to_channels_first
from harness.methods._adapt import (
    as_library_value,
    layer_name,
    library_class,
    library_layer,
    read_signature,
    seeded_global_rngs,
    split_params,
)
from harness.methods._core import register_family, require
from harness.methods.entry import Family, Method

PREFIX = "gradcam"
EXTRA = "gradcam"
_NO_LAYER = {"FullGrad"}
_NOT_METHODS = {"RandomCAM": "it draws from numpy's global random state, unseeded; use our "
                             "'random' control"}
_RESERVED = {"model": "the model", "target_layers": "the 'layer' parameter, a module name",
             "input_tensor": "the images x", "targets": "the target classes",
             "reshape_transform": "the model's layout (ModelInfo.layout)"}


def _library():
    return require("pytorch_grad_cam", EXTRA, f"method family '{PREFIX}:'", package="grad-cam")


def classes() -> dict[str, type]:
    """pytorch-grad-cam's CAM classes usable as methods, by name (needs the ``gradcam`` extra)."""
    library = _library()
    base = require("pytorch_grad_cam.base_cam", EXTRA, f"method family '{PREFIX}:'",
                   package="grad-cam").BaseCAM
    found = {}
    for name in dir(library):
        cls = getattr(library, name)
        if (inspect.isclass(cls) and issubclass(cls, base) and cls is not base
                and name not in _NOT_METHODS):
            found[name] = cls
    return dict(sorted(found.items()))


def members() -> list[str]:
    return list(classes())


@functools.cache
def _groups(cls: type) -> dict:
    return {"init": read_signature(cls.__init__, skip=set()),
            "call": read_signature(cls.__call__, skip=set())}


def _check(name: str, cls: type, params: dict) -> dict[str, dict]:
    if "layer" in params and cls.__name__ in _NO_LAYER:
        raise ConfigError(f"layer: {name} takes no layer (it uses every conv/BatchNorm bias)")
    library = {k: v for k, v in params.items() if k != "layer"}
    return split_params(name, library, _groups(cls), _RESERVED)


def _maps(name: str, cls: type, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
          params: dict) -> torch.Tensor:
    split = _check(name, cls, params)
    init = {k: as_library_value(v) for k, v in split["init"].items()}
    call = {k: as_library_value(v) for k, v in split["call"].items()}
    targets_module = require("pytorch_grad_cam.utils.model_targets", EXTRA, name,
                             package="grad-cam")
    targets = [targets_module.ClassifierOutputTarget(int(t)) for t in target.tolist()]
    inputs = x.detach().clone().requires_grad_(True)
    takes_layer = cls.__name__ not in _NO_LAYER
    if takes_layer and "reshape_transform" in _groups(cls)["init"].names:
        init["reshape_transform"] = functools.partial(
            to_channels_first, layout=model_layout(model),
            layer=layer_name(model, params.get("layer"), name), input_size=tuple(x.shape[2:]))
    with (library_layer(model, x, params.get("layer"), name) if takes_layer
          else contextlib.nullcontext()) as layer, seeded_global_rngs(0, x.device):
        cam = cls(model=model, target_layers=[layer] if takes_layer else [], **init)
        try:
            maps = cam(input_tensor=inputs, targets=targets, **call)
        except BaseException:
            _release_after_failure(cam)
            raise
        cam.__exit__(None, None, None)  # releases its hooks
    return torch.as_tensor(maps).to(device=x.device, dtype=x.dtype)


def _release_after_failure(cam) -> None:
    """Remove a CAM object's hooks after its call failed. pytorch-grad-cam's release
    (``__exit__``) first detaches the stored activations and gradients in place, which itself
    raises after some failed calls (views); raised from ``finally`` it hid the call's error and
    left the hooks on the model. The stored tensors are dropped instead, then the hooks removed."""
    hooks = cam.activations_and_grads
    hooks.activations, hooks.gradients = [], []
    hooks.release()


def method(member: str) -> Method:
    """The ``Method`` ``gradcam:<member>``."""
    cls = library_class(classes(), member, _NOT_METHODS, "pytorch-grad-cam class",
                        f"{PREFIX}:<CAMClass>")
    name = f"{PREFIX}:{member}"

    def as_map(model, x, target, **params):
        return _maps(name, cls, model, x, target, params)

    def check_params(params: dict) -> None:
        _check(name, cls, dict(params))

    doc = " ".join((cls.__doc__ or "").split()).split(". ")[0]
    summary = f"pytorch-grad-cam {member}" + (f": {doc}." if doc else " (ReLU, min-max scaled).")
    version = _version()
    return Method(name, as_map,
                  citation=f"pytorch-grad-cam {version} pytorch_grad_cam.{member} (Gildenblat & "
                           "contributors 2021, github.com/jacobgil/pytorch-grad-cam)",
                  summary=summary, check_params=check_params)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grad-cam")
    except PackageNotFoundError:
        return "?"


register_family(Family(PREFIX, "pytorch-grad-cam", EXTRA, "pytorch-grad-cam CAM classes", members,
                       method))
