"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
section 3.1; reference code ``sanity_checks_saliency``).

- cascading: re-initialise blocks cumulatively from the logits down (step k has blocks 0..k
  randomized); independent: one block at a time, the rest trained.
- Each layer is re-initialised with its own initialiser (the one its architecture's constructor
  uses: SqueezeNet's kaiming-uniform convs and N(0, 0.01) final conv; ``reset_parameters`` for
  every other layer, which also resets BatchNorm statistics), from ``torch.manual_seed(seed * 1000 +
  block index)`` on a deep copy on the CPU: block k gets the same weights in both modes, and the
  caller's model is never modified.
- ``target_mode="own_top1"`` (the paper): each randomized model explains its own top-1 class;
  ``"fixed"`` (Quantus' choice): the original target.
- Similarity to the original map per image with the measures of ``harness.sanity.similarity``.
  Undefined values (constant maps) are recorded with their reason, never as a silent NaN.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import init

from harness.methods import get_method, saliency_batched
from harness.models import Block, model_info
from harness.sanity.similarity import MEASURES, SIGNED_MEASURES, UndefinedSimilarity

MODES = ("cascading", "independent")
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


def _default_init(path: str, module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


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
            raise ValueError(f"unknown block {block!r}; valid blocks (top-down): "
                             f"{', '.join(by_label)}")
    return chosen


def randomize(model: nn.Module, blocks: Sequence[Block], *, seed: int,
              indices: Sequence[int] | None = None) -> nn.Module:
    """A deep copy of ``model`` with ``blocks`` re-initialised (block ``blocks[j]`` from seed
    ``seed * 1000 + indices[j]``), in eval mode with frozen parameters, on the model's device."""
    info = model_info(model)
    initialise = INITIALISERS.get(info.name, _default_init)
    device = next(model.parameters()).device
    randomized = copy.deepcopy(model).cpu()
    indices = list(indices) if indices is not None else list(range(len(blocks)))
    for block, index in zip(blocks, indices, strict=True):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed * 1000 + index)
            for path in block.modules:
                root = randomized.get_submodule(path)
                for name, module in root.named_modules():
                    initialise(f"{path}.{name}" if name else path, module)
    randomized.to(device).eval()
    for param in randomized.parameters():
        param.requires_grad_(False)
    return randomized


# ----------------------------------------------------------------------------- the test


def _similarities(original: torch.Tensor, other: torch.Tensor, original_signed, other_signed,
                  measures: Sequence[str], ids: Sequence[str]) -> list[dict]:
    rows = []
    for index, image_id in enumerate(ids):
        for measure in measures:
            if measure in SIGNED_MEASURES:
                if original_signed is None:
                    rows.append({"image_id": image_id, "measure": measure, "value": None,
                                 "status": "method has no signed variant"})
                    continue
                a, b = original_signed[index], other_signed[index]
            else:
                a, b = original[index], other[index]
            try:
                value = MEASURES[measure](a.cpu().numpy(), b.cpu().numpy())
                rows.append({"image_id": image_id, "measure": measure, "value": value,
                             "status": "ok"})
            except UndefinedSimilarity as reason:
                rows.append({"image_id": image_id, "measure": measure, "value": None,
                             "status": f"undefined: {reason}"})
    return rows


def model_randomization(model: nn.Module, method: str, x: torch.Tensor, target, *,
                        mode: str = "cascading", blocks: Sequence[str | Block] | None = None,
                        target_mode: str = "own_top1", seed: int = 0,
                        method_params: dict | None = None,
                        measures: Sequence[str] = ("spearman_abs", "spearman_signed", "ssim",
                                                   "hog"),
                        ids: Sequence[str] | None = None, batch_size: int = 16,
                        keep_maps: bool = False) -> RandomizationResult:
    """Similarity of ``method``'s maps on the trained model and on randomized copies.

    ``x`` ``[N, C, H, W]``, ``target`` ``[N]`` (the original model's class to explain). Returns a
    ``RandomizationResult`` whose records hold, per image, step and measure, the similarity
    between the original map and the map after the step's randomization.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of: {', '.join(MODES)}")
    if target_mode not in TARGET_MODES:
        raise ValueError(f"target_mode {target_mode!r} is not one of: {', '.join(TARGET_MODES)}")
    for measure in measures:
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; valid: {', '.join(MEASURES)}")
    entry = get_method(method)
    params = dict(method_params or {})
    chosen = resolve_blocks(model, blocks)
    all_labels = [block.label for block in model_info(model).blocks]
    ids = list(ids) if ids is not None else [f"#{i}" for i in range(x.shape[0])]
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    want_signed = entry.signed is not None and any(m in SIGNED_MEASURES for m in measures)

    def maps_of(network: nn.Module, classes: torch.Tensor):
        absolute = saliency_batched(method, network, x, classes, batch_size=batch_size, **params)
        signed = (saliency_batched(method, network, x, classes, batch_size=batch_size,
                                   signed=True, **params) if want_signed else None)
        return absolute, signed

    original, original_signed = maps_of(model, target)
    records: list[dict] = []
    kept: dict[str, torch.Tensor] = {}
    for step, block in enumerate(chosen, start=1):
        if mode == "cascading":
            to_randomize = chosen[:step]
        else:
            to_randomize = [block]
        indices = [all_labels.index(b.label) if b.label in all_labels else chosen.index(b)
                   for b in to_randomize]
        randomized = randomize(model, to_randomize, seed=seed, indices=indices)
        if target_mode == "own_top1":
            with torch.inference_mode():
                classes = randomized(x).argmax(dim=1)
        else:
            classes = target
        other, other_signed = maps_of(randomized, classes)
        rows = _similarities(original, other, original_signed, other_signed, measures, ids)
        for row in rows:
            row.update(step=step, block=block.label,
                       target=int(classes[ids.index(row["image_id"])]))
        records += rows
        if keep_maps:
            kept[block.label] = other.cpu()
        del randomized
    undefined = [r for r in records if r["status"].startswith("undefined")]
    if undefined:
        warnings.warn(f"{method}: {len(undefined)} similarity values are undefined "
                      f"(first: image {undefined[0]['image_id']}, {undefined[0]['measure']}: "
                      f"{undefined[0]['status']})", stacklevel=2)
    return RandomizationResult(method, mode, target_mode, seed,
                               tuple(block.label for block in chosen), records,
                               original.cpu() if keep_maps else None, kept)
