"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
section 3.1; reference code ``sanity_checks_saliency``).

- cascading: re-initialise blocks cumulatively (step k has the first k blocks of the order
  randomized); independent: one block at a time, the rest trained.
- ``order``: ``top_down`` (the paper: from the logits down, default) or ``bottom_up`` (from the
  input up; Hedström et al. 2024, "A Fresh Look at Sanity Checks for Saliency Maps", and Binder
  et al. 2023 show that top-down randomization keeps the scales of the lower layers'
  activations, so the map of a faithful method may still resemble the original; Quantus 0.6's
  ``layer_order="bottom_up"``). The order changes which blocks are randomized at each step, not
  their weights: block k gets the same weights in either order.
- Each layer is re-initialised with its own initialiser (the one its architecture's constructor
  uses: SqueezeNet's kaiming-uniform convs and N(0, 0.01) final conv; ``reset_parameters`` for
  every other layer, which also resets BatchNorm statistics), from ``torch.manual_seed(seed * 1000 +
  block index)`` on a deep copy on the CPU: block k gets the same weights in both modes, and the
  caller's model is never modified. Transformers: ``nn.MultiheadAttention`` by its own
  ``_reset_parameters`` (its packed ``in_proj`` has no ``reset_parameters``), and the bare
  parameters of their constructors (class, distillation and register tokens, position
  embeddings, Swin's relative position bias tables and logit scales), which a block names by
  path or which sit on a module without ``reset_parameters``, by their constructors' initialisers
  (``PARAMETER_INITIALISERS``). Other bare parameters keep their values, as before (ConvNeXt's
  ``layer_scale``).
- ``target_mode="own_top1"`` (the paper): each randomized model explains its own top-1 class;
  ``"fixed"`` (Quantus' choice): the original target.
- Similarity to the original map per image with the measures of ``harness.sanity.similarity``,
  on maps normalised as the reference notebook (``map_normalisation="reference"``, default), the
  method's own maps (``"method"``) or the method's maps divided by the square root of their
  average second moment (``"second_moment"``, Binder et al. 2023). Undefined values (constant
  maps) are recorded with their reason, never as a silent NaN.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import init

from harness.errors import MetricError
from harness.methods import get_method, raw_attribution_batched, saliency_batched
from harness.metrics.registry import register_metric
from harness.models import Block, model_info
from harness.sanity.similarity import (
    MEASURE_VERSION,
    MEASURES,
    NORMALISATIONS,
    UndefinedSimilarity,
    compare_views,
    method_views,
    reference_views,
    second_moment_views,
)

MODES = ("cascading", "independent")
ORDERS = ("top_down", "bottom_up")
TARGET_MODES = ("own_top1", "fixed")


@dataclass(frozen=True)
class RandomizationResult:
    """Records (one per image x step x measure) and, when kept, the maps.

    Record keys: image_id, step (1-based), block (label of the block randomized at that step),
    measure, value (float or None), status ("ok" or why undefined), target (class explained).
    """

    method: str
    mode: str
    target_mode: str
    seed: int
    blocks: tuple[str, ...]
    records: list[dict]
    original: torch.Tensor | None = None
    randomized: dict[str, torch.Tensor] = field(default_factory=dict)
    map_normalisation: str = "reference"
    order: str = "top_down"

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.records)


# ----------------------------------------------------------------------------- re-initialisation


def _squeezenet_init(path: str, module: nn.Module) -> None:
    """torchvision's SqueezeNet constructor: final conv N(0, 0.01), other convs kaiming-uniform,
    biases zero."""
    if isinstance(module, nn.Conv2d):
        if path == "classifier.1":
            init.normal_(module.weight, mean=0.0, std=0.01)
        else:
            init.kaiming_uniform_(module.weight)
        if module.bias is not None:
            init.constant_(module.bias, 0)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()


def _log_ten(param: torch.Tensor) -> None:
    param.copy_(torch.log(10 * torch.ones_like(param)))


# the constructors' initialisers of bare parameters (torchvision vision_transformer.py,
# swin_transformer.py, maxvit.py; timm vision_transformer.py init_weights, deit.py), by name
PARAMETER_INITIALISERS: dict[str, Callable[[torch.Tensor], None]] = {
    "class_token": init.zeros_,  # torchvision VisionTransformer
    "pos_embedding": partial(init.normal_, std=0.02),  # torchvision Encoder
    "relative_position_bias_table": partial(init.trunc_normal_, std=0.02),  # Swin v1, MaxViT
    "logit_scale": _log_ten,  # torchvision Swin v2: log(10)
    "cls_token": partial(init.normal_, std=1e-6),  # timm
    "reg_token": partial(init.normal_, std=1e-6),  # timm
    "dist_token": partial(init.trunc_normal_, std=0.02),  # timm DeiT distilled
    "pos_embed": partial(init.trunc_normal_, std=0.02),  # timm
}


def init_parameter(path: str, param: torch.Tensor) -> None:
    """Re-initialise bare parameter ``path`` by ``PARAMETER_INITIALISERS`` (its last name)."""
    name = path.rsplit(".", 1)[-1]
    if name not in PARAMETER_INITIALISERS:
        raise MetricError(f"block parameter {path!r} has no known initialiser; known: "
                         f"{', '.join(PARAMETER_INITIALISERS)}")
    PARAMETER_INITIALISERS[name](param)


def _default_init(path: str, module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    elif isinstance(module, nn.MultiheadAttention):
        module._reset_parameters()
    else:
        for name, param in module.named_parameters(recurse=False):
            if name in PARAMETER_INITIALISERS:
                init_parameter(f"{path}.{name}", param)


INITIALISERS: dict[str, Callable[[str, nn.Module], None]] = {
    "squeezenet1_1": _squeezenet_init,
    "squeezenet1_0": _squeezenet_init,
}


def resolve_blocks(model: nn.Module, blocks: Sequence[str | Block] | None) -> list[Block]:
    """The model's blocks (top-down), or the named subset/explicit list; an unknown label names
    the valid ones."""
    known = list(model_info(model).blocks)
    if blocks is None:
        return known
    by_label = {block.label: block for block in known}
    chosen = []
    for block in blocks:
        if isinstance(block, Block):
            chosen.append(block)
        elif block in by_label:
            chosen.append(by_label[block])
        else:
            raise MetricError(f"unknown block {block!r}; valid blocks (top-down): "
                             f"{', '.join(by_label)}")
    return chosen


def _initialise_blocks(randomized: nn.Module, blocks: Sequence[Block], indices: Sequence[int],
                       *, seed: int, initialise: Callable[[str, nn.Module], None]) -> None:
    """Re-initialise ``blocks`` of ``randomized`` (on the CPU) in place, block ``blocks[j]`` from
    its own seed ``seed * 1000 + indices[j]`` (so a block's weights depend on nothing else)."""
    parameters = dict(randomized.named_parameters())
    for block, index in zip(blocks, indices, strict=True):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed * 1000 + index)
            for path in block.modules:
                if path in parameters:  # a bare parameter (a class token, an embedding)
                    init_parameter(path, parameters[path])
                    continue
                root = randomized.get_submodule(path)
                for name, module in root.named_modules():
                    initialise(f"{path}.{name}" if name else path, module)


def randomize(model: nn.Module, blocks: Sequence[Block], *, seed: int,
              indices: Sequence[int] | None = None) -> nn.Module:
    """A deep copy of ``model`` with ``blocks`` re-initialised (block ``blocks[j]`` from seed
    ``seed * 1000 + indices[j]``), in eval mode with frozen parameters, on the model's device."""
    device = next(model.parameters()).device
    randomized = copy.deepcopy(model).cpu()
    indices = list(indices) if indices is not None else list(range(len(blocks)))
    _initialise_blocks(randomized, blocks, indices, seed=seed,
                       initialise=INITIALISERS.get(model_info(model).name, _default_init))
    randomized.to(device).eval()
    for param in randomized.parameters():
        param.requires_grad_(False)
    return randomized


def randomized_models(model: nn.Module, steps: Sequence[tuple[Block, list[Block], list[int]]],
                      *, seed: int) -> Iterator[nn.Module]:
    """Per step of ``randomization_steps`` (``(block, blocks, indices)``), the model with that
    step's ``blocks`` re-initialised: the same weights, bit for bit, as ``randomize(model,
    blocks, seed=seed, indices=indices)``, since each block's initialisation depends on its own
    seed alone. A step that randomizes the previous step's blocks and more (cascading) extends
    the previous step's copy instead of copying the model again: one deep copy and one block
    initialisation per step instead of k. The yielded model is reused by the next step."""
    device = next(model.parameters()).device
    initialise = INITIALISERS.get(model_info(model).name, _default_init)
    current, done = None, []
    for _, blocks, indices in steps:
        pairs = list(zip(blocks, indices, strict=True))  # a block and its seed index
        if current is not None and len(pairs) >= len(done) and pairs[: len(done)] == done:
            current = current.cpu()  # the initialisers draw from the CPU generator
            _initialise_blocks(current, list(blocks[len(done):]), list(indices[len(done):]),
                               seed=seed, initialise=initialise)
            current.to(device)
        else:
            current = randomize(model, blocks, seed=seed, indices=list(indices))
        done = pairs
        yield current


def ordered_blocks(blocks: Sequence[Block], order: str) -> list[Block]:
    """``blocks`` (given top-down) in the randomization ``order``: as given for ``top_down``,
    reversed (from the input up) for ``bottom_up``."""
    if order not in ORDERS:
        raise MetricError(f"order {order!r} is not one of: {', '.join(ORDERS)}")
    return list(blocks) if order == "top_down" else list(reversed(blocks))


def randomization_steps(model: nn.Module, blocks: Sequence[Block], *, mode: str, order: str
                        ) -> list[tuple[Block, list[Block], list[int]]]:
    """Per step: the block the step adds, every block randomized at that step (cascading: the
    first k blocks of the ``order``; independent: that block alone) and their seed indices
    (their positions in the model's top-down block list, so a block gets the same weights in
    every mode and order)."""
    if mode not in MODES:
        raise MetricError(f"mode {mode!r} is not one of: {', '.join(MODES)}")
    sequence = ordered_blocks(blocks, order)
    all_labels = [block.label for block in model_info(model).blocks]
    top_down = list(blocks)
    steps = []
    for step, block in enumerate(sequence, start=1):
        chosen = sequence[:step] if mode == "cascading" else [block]
        indices = [all_labels.index(b.label) if b.label in all_labels else top_down.index(b)
                   for b in chosen]
        steps.append((block, chosen, indices))
    return steps


# ----------------------------------------------------------------------------- the test


def _views(method: str, network: nn.Module, x: torch.Tensor, classes: torch.Tensor, *,
           params: dict, normalisation: str, needed: set[str], want_signed: bool,
           batch_size: int) -> tuple[list[dict], torch.Tensor]:
    """Per-image views (``harness.sanity.similarity``) of ``method`` on ``network``, and the maps
    ``[N, H, W]`` a figure shows (the ``abs`` view under ``reference``, the method's map
    otherwise)."""
    if normalisation not in ("reference", "method", "second_moment"):
        raise MetricError(f"map_normalisation {normalisation!r} is not one of: "
                          f"{', '.join(NORMALISATIONS)}")
    if normalisation == "reference":
        raw = raw_attribution_batched(method, network, x, classes, batch_size=batch_size,
                                      method_params=params)
        if raw is None:  # a 2-D map only: the notebook's three_dims copy, equivalently C = 1
            raw = saliency_batched(method, network, x, classes, batch_size=batch_size,
                                   method_params=params)[:, None]
        arrays = raw.detach().double().cpu().permute(0, 2, 3, 1).numpy()
        views = []
        for array in arrays:
            views.append({name: view for name, view in reference_views(array).items()
                          if name in needed | {"abs"}})
        shown = torch.stack([torch.zeros(arrays.shape[1:3], dtype=torch.float64)
                             if isinstance(v["abs"], UndefinedSimilarity)
                             else torch.from_numpy(v["abs"]) for v in views])
        return views, shown.float()
    maps = saliency_batched(method, network, x, classes, batch_size=batch_size,
                            method_params=params)
    signed = (saliency_batched(method, network, x, classes, batch_size=batch_size, signed=True,
                               method_params=params) if want_signed else None)
    make_views = method_views if normalisation == "method" else second_moment_views
    views = [make_views(maps[i].double().cpu().numpy(),
                        None if signed is None else signed[i].double().cpu().numpy())
             for i in range(maps.shape[0])]
    return views, maps


def _similarities(original: list[dict], other: list[dict], measures: Sequence[str],
                  ids: Sequence[str], no_signed: bool,
                  normalisation: str | None = None,
                  original_parts: list[dict] | None = None) -> list[dict]:
    """Per image and measure, the record of ``original[i]`` against ``other[i]``;
    ``original_parts`` (one dict per image, kept by the caller across calls): the original maps'
    per-measure parts (``compare_views``)."""
    rows = []
    for index, image_id in enumerate(ids):
        for measure in measures:
            if no_signed and MEASURES[measure].view == "signed":
                rows.append({"image_id": image_id, "measure": measure, "value": None,
                             "status": "method has no signed variant"})
                continue
            try:
                value = compare_views(measure, original[index], other[index], normalisation,
                                      original_parts=None if original_parts is None
                                      else original_parts[index])
                rows.append({"image_id": image_id, "measure": measure, "value": value,
                             "status": "ok"})
            except UndefinedSimilarity as reason:
                rows.append({"image_id": image_id, "measure": measure, "value": None,
                             "status": f"undefined: {reason}"})
    return rows


def model_randomization(model: nn.Module, method: str, x: torch.Tensor, target, *,
                        mode: str = "cascading", blocks: Sequence[str | Block] | None = None,
                        order: str = "top_down", target_mode: str = "own_top1", seed: int = 0,
                        method_params: dict | None = None,
                        measures: Sequence[str] = ("spearman_abs", "spearman_signed", "ssim",
                                                   "hog"),
                        map_normalisation: str = "reference",
                        ids: Sequence[str] | None = None, batch_size: int = 16,
                        keep_maps: bool = False) -> RandomizationResult:
    """Similarity of ``method``'s maps on the trained model and on randomized copies.

    ``x`` ``[N, C, H, W]``, ``target`` ``[N]`` (the original model's class to explain). Returns a
    ``RandomizationResult`` whose records hold, per image, step and measure, the similarity
    between the original map and the map after the step's randomization.

    ``blocks`` are named top-down (default: all of the model's); ``order`` is the order of the
    steps: ``"top_down"`` (the paper, default) or ``"bottom_up"``. ``map_normalisation``:
    ``"reference"`` (default; the reference notebook's normalisation of the raw attribution, so
    the numbers mean what the paper's numbers mean), ``"method"`` (the method's own map, as the
    tables report the method) or ``"second_moment"`` (the method's map over the square root of
    its average second moment, Binder et al. 2023); see ``harness.sanity.similarity``.
    Kept maps (``keep_maps``) are the ``abs`` views under ``reference`` (what the paper's
    figure 2 shows), the method's maps otherwise.
    """
    if mode not in MODES:
        raise MetricError(f"mode {mode!r} is not one of: {', '.join(MODES)}")
    if order not in ORDERS:
        raise MetricError(f"order {order!r} is not one of: {', '.join(ORDERS)}")
    if target_mode not in TARGET_MODES:
        raise MetricError(f"target_mode {target_mode!r} is not one of: {', '.join(TARGET_MODES)}")
    if map_normalisation not in NORMALISATIONS:
        raise MetricError(f"map_normalisation {map_normalisation!r} is not one of: "
                         f"{', '.join(NORMALISATIONS)}")
    for measure in measures:
        if measure not in MEASURES:
            raise MetricError(f"unknown measure {measure!r}; valid: {', '.join(MEASURES)}")
    entry = get_method(method)
    params = dict(method_params or {})
    chosen = resolve_blocks(model, blocks)
    ids = list(ids) if ids is not None else [f"#{i}" for i in range(x.shape[0])]
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    needed = {MEASURES[m].view for m in measures}
    no_signed = map_normalisation != "reference" and entry.signed is None
    views_of = partial(_views, method, params=params, normalisation=map_normalisation,
                       needed=needed, want_signed="signed" in needed and not no_signed,
                       batch_size=batch_size)

    original, original_maps = views_of(model, x, target)
    records: list[dict] = []
    kept: dict[str, torch.Tensor] = {}
    steps = randomization_steps(model, chosen, mode=mode, order=order)
    original_parts: list[dict] = [{} for _ in ids]  # the original maps' ranks and HOG, once
    for step, ((block, _, _), randomized) in enumerate(
            zip(steps, randomized_models(model, steps, seed=seed), strict=True), start=1):
        if target_mode == "own_top1":
            with torch.inference_mode():
                classes = randomized(x).argmax(dim=1)
        else:
            classes = target
        other, other_maps = views_of(randomized, x, classes)
        rows = _similarities(original, other, measures, ids, no_signed, map_normalisation,
                             original_parts)
        for row in rows:
            row.update(step=step, block=block.label,
                       target=int(classes[ids.index(row["image_id"])]))
        records += rows
        if keep_maps:
            kept[block.label] = other_maps.cpu()
    undefined = [r for r in records if r["status"].startswith("undefined")]
    if undefined:
        warnings.warn(f"{method}: {len(undefined)} similarity values are undefined "
                      f"(first: image {undefined[0]['image_id']}, {undefined[0]['measure']}: "
                      f"{undefined[0]['status']})", stacklevel=2)
    return RandomizationResult(method, mode, target_mode, seed,
                               tuple(block.label for block, _, _ in steps), records,
                               original_maps.cpu() if keep_maps else None, kept,
                               map_normalisation, order)


# ----------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class RandomizationSettings:
    """Settings of the cascading/independent model-parameter randomization test (defaults: the
    paper's top-down cascading test with each model's own top-1 class and the notebook's
    normalisation; ``order: bottom_up`` and ``map_normalisation: second_moment`` are the
    revisions of Hedström et al. 2024 and Binder et al. 2023)."""

    mode: str = "cascading"
    target_mode: str = "own_top1"
    blocks: list | None = None
    measures: list = field(default_factory=lambda: ["spearman_abs", "spearman_signed", "ssim",
                                                    "hog"])
    seed: int = 0
    methods: list | None = None  # display names to check (default: every method)
    map_normalisation: str = "reference"
    order: str = "top_down"

    def check(self) -> None:
        for key, value, choices in (("mode", self.mode, MODES), ("order", self.order, ORDERS),
                                    ("target_mode", self.target_mode, TARGET_MODES),
                                    ("map_normalisation", self.map_normalisation,
                                     NORMALISATIONS)):
            if value not in choices:
                raise MetricError(f"{key}: {value!r} is not one of: {', '.join(choices)}")
        for measure in self.measures:
            if measure not in MEASURES:
                raise MetricError(f"measures: {measure!r} is not one of: {', '.join(MEASURES)}")
        if not self.measures:
            raise MetricError("measures: name at least one measure")
        blocks = self.blocks if self.blocks is not None else ["(all)"]
        for key, values in (("measures", list(self.measures)), ("blocks", list(blocks))):
            if not values:
                raise MetricError(f"{key}: an empty list; omit the key for every block")
            twice = sorted({v for v in values if values.count(v) > 1}, key=str)
            if twice:
                raise MetricError(f"{key}: {twice[0]!r} is named twice")
        if self.seed < 0:
            raise MetricError(f"seed: must be >= 0, got {self.seed}")


def _parts(settings: RandomizationSettings, model: nn.Module) -> list[tuple]:
    blocks = [block.label for block in ordered_blocks(resolve_blocks(model, settings.blocks),
                                                      settings.order)]
    return [(measure, block) for measure in settings.measures for block in blocks]


def _last_step_columns(frame):
    """``rand_<measure>``: each image's similarity after the last step: every block randomized in
    cascading mode, the last block of the order alone in independent mode (the per-block values
    are in the records and the similarity figure); lower (more sensitive to the model) is
    better."""
    import pandas as pd

    last = frame[frame["step"] == frame["step"].max()]
    return pd.DataFrame({"column": "rand_" + last["measure"].astype(str), "direction": "down",
                         "image_id": last["image_id"].to_numpy(),
                         "value": last["value"].to_numpy(dtype=float, na_value=np.nan)})


def _similarity_curves(frame):
    """``rand_<measure>``: per image, the similarity after each step (x: the step)."""
    import pandas as pd

    curves = {}
    frame = frame.assign(value=pd.to_numeric(frame["value"]))
    for measure, rows in frame.groupby("measure", sort=False):
        table = rows.pivot_table(index="image_id", columns="step", values="value",
                                 aggfunc="first", dropna=False)
        values = table.to_numpy(dtype=float, na_value=np.nan)
        curves[f"rand_{measure}"] = (table.columns.to_numpy(dtype=float), values)
    return curves


@register_metric("model_randomization", settings=RandomizationSettings, direction="down",
                 citation="Adebayo et al. 2018 (arXiv:1810.03292), sanity_checks_saliency",
                 needs=("method",), columns=_last_step_columns, parts=_parts,
                 curves=_similarity_curves, criterion="randomisation")
def _randomization_records(unit, settings: RandomizationSettings) -> list[dict]:
    """Similarity of each map to the original after re-initialising the model's blocks
    cumulatively (cascading, from the logits down or from the input up) or one at a time; lower
    (more sensitive) is better."""
    result = model_randomization(
        unit.model, unit.method, unit.x, unit.target, mode=settings.mode,
        blocks=settings.blocks, order=settings.order, target_mode=settings.target_mode,
        seed=settings.seed, method_params=unit.method_params, measures=settings.measures,
        ids=list(unit.ids), map_normalisation=settings.map_normalisation,
        batch_size=unit.batch_size)
    return [{**r, "mode": settings.mode, "order": settings.order,
             "target_mode": settings.target_mode,
             "map_normalisation": settings.map_normalisation, "measure_version": MEASURE_VERSION}
            for r in result.records]
