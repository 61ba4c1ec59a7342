"""The class each image's map explains: its label, or the model's top-1 prediction."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.errors import DataError


def resolve_targets(model: torch.nn.Module, x: torch.Tensor, labels: Sequence[int | None],
                    ids: Sequence[str], *, mode: str = "label") -> torch.Tensor:
    """The class each image's map explains.

    Args:
        model: the classifier.
        x: model inputs ``[N, C, H, W]``.
        labels: the dataset labels (None where an image has none).
        ids: image ids, for the messages.
        mode: ``"label"`` (the label; the model's top-1 prediction where there is none) or
            ``"predicted"`` (always the top-1 prediction on the clean image: RISE's convention).

    Returns:
        Class indices ``[N]`` (long, on x's device).

    Raises:
        DataError: an unknown mode, or a label outside ``[0, num_classes)`` (naming the image).
    """
    if mode not in ("label", "predicted"):
        raise DataError(f"target mode {mode!r} is not one of: label, predicted")
    with torch.inference_mode():
        logits = model(x)
    num_classes = logits.shape[1]
    predicted = logits.argmax(dim=1).cpu()
    targets = []
    for index, (label, image_id) in enumerate(zip(labels, ids, strict=True)):
        if mode == "predicted" or label is None:
            targets.append(int(predicted[index]))
            continue
        if not 0 <= int(label) < num_classes:
            raise DataError(
                f"label {label} of image {image_id!r} is out of range: the model has "
                f"{num_classes} classes (0..{num_classes - 1})"
            )
        targets.append(int(label))
    return torch.tensor(targets, dtype=torch.long, device=x.device)

