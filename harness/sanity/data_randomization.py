"""Data randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", section 3.2).

The same small CNN is trained twice on a digits dataset rendered offline with PIL (random digit,
position, size, stroke brightness and background noise): once on the true labels and once on a
seeded permutation of them, each until it fits its training labels (>= ``target_accuracy``).
A method passes if its maps for the two models differ (low similarity): explanations of a model
that memorised noise should not look like those of a model that learned the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from harness.errors import MetricError
from harness.methods import get_method
from harness.models import attach_info, prepare
from harness.sanity.randomization import _similarities, _views
from harness.sanity.similarity import MEASURES, NORMALISATIONS

DIGIT_MEAN = (0.5, 0.5, 0.5)
DIGIT_STD = (0.5, 0.5, 0.5)


def render_digits(n_images: int, *, size: int = 32, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_images`` digits: images ``[N, 3, size, size]`` in the model's input space
    ((pixels - 0.5) / 0.5) and labels ``[N]``. Deterministic under ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n_images)
    images = np.empty((n_images, size, size), dtype=np.float32)
    for index, label in enumerate(labels):
        font = ImageFont.load_default(size=int(rng.integers(size // 2, size * 3 // 4 + 1)))
        canvas = Image.new("L", (size, size))
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font)
        width, height = right - left, bottom - top
        x = int(rng.integers(0, max(1, size - width))) - left
        y = int(rng.integers(0, max(1, size - height))) - top
        draw.text((x, y), str(label), fill=int(rng.integers(160, 256)), font=font)
        pixels = np.asarray(canvas, dtype=np.float32) / 255
        pixels += rng.normal(0, 0.1, pixels.shape).astype(np.float32)
        images[index] = np.clip(pixels, 0, 1)
    x = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous()
    return (x - 0.5) / 0.5, torch.from_numpy(labels).long()


class DigitCNN(nn.Module):
    """conv(32)-ReLU-pool-conv(64)-ReLU-pool-fc(256)-ReLU-fc(10)."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 256), nn.ReLU(), nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class TrainedModel:
    model: nn.Module
    train_accuracy: float
    epochs: int
    labels: str  # "true" or "permuted"


def train_until_fit(x: torch.Tensor, labels: torch.Tensor, *, seed: int, kind: str,
                    target_accuracy: float = 0.95, max_epochs: int = 200, batch_size: int = 64,
                    lr: float = 1e-3) -> TrainedModel:
    """Train a ``DigitCNN`` with Adam until its accuracy on (x, labels) reaches
    ``target_accuracy``; an error if ``max_epochs`` pass first."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitCNN(x.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    accuracy = 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), labels[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            accuracy = float((model(x).argmax(1) == labels).float().mean())
        if accuracy >= target_accuracy:
            epochs_run = epoch
            break
    else:
        raise MetricError(f"the {kind}-label model reached {accuracy:.3f} train accuracy in "
                           f"{max_epochs} epochs, short of {target_accuracy}")
    attach_info(model, name=f"digit_cnn_{kind}", weights=f"trained({kind} labels, seed={seed})",
                mean=DIGIT_MEAN, std=DIGIT_STD, input_size=x.shape[-1],
                categories=tuple(str(d) for d in range(10)))
    return TrainedModel(prepare(model), accuracy, epochs_run, kind)


@dataclass(frozen=True)
class DataRandomizationResult:
    method: str
    true_model: TrainedModel
    permuted_model: TrainedModel
    records: list[dict]

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.records)


def train_pair(*, n_train: int = 1000, size: int = 32, seed: int = 0,
               target_accuracy: float = 0.95, max_epochs: int = 200
               ) -> tuple[TrainedModel, TrainedModel, torch.Tensor, torch.Tensor]:
    """The true-label and permuted-label models on the same rendered images."""
    x, labels = render_digits(n_train, size=size, seed=seed)
    permuted = labels[torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))]
    true_model = train_until_fit(x, labels, seed=seed, kind="true",
                                 target_accuracy=target_accuracy, max_epochs=max_epochs)
    permuted_model = train_until_fit(x, permuted, seed=seed, kind="permuted",
                                     target_accuracy=target_accuracy, max_epochs=max_epochs)
    return true_model, permuted_model, x, labels


def data_randomization(method: str, true_model: TrainedModel, permuted_model: TrainedModel,
                       x: torch.Tensor, *, method_params: dict | None = None,
                       measures=("spearman_abs", "spearman_signed", "ssim", "hog"),
                       map_normalisation: str = "reference", ids=None,
                       batch_size: int = 32) -> DataRandomizationResult:
    """Similarity per image of ``method``'s maps for the two models, each explaining its own
    top-1 class on ``x`` ``[N, 3, S, S]``; measures and ``map_normalisation`` as in
    ``model_randomization`` (HOG is undefined below 48 x 48 pixels, e.g. on 32 x 32 digits)."""
    if map_normalisation not in NORMALISATIONS:
        raise MetricError(f"map_normalisation {map_normalisation!r} is not one of: "
                         f"{', '.join(NORMALISATIONS)}")
    params = dict(method_params or {})
    ids = list(ids) if ids is not None else [f"digit-{i}" for i in range(len(x))]
    needed = {MEASURES[m].view for m in measures}
    no_signed = map_normalisation != "reference" and get_method(method).signed is None
    views = {}
    for trained in (true_model, permuted_model):
        with torch.inference_mode():
            classes = trained.model(x).argmax(1)
        views[trained.labels], _ = _views(
            method, trained.model, x, classes, params=params, normalisation=map_normalisation,
            needed=needed, want_signed="signed" in needed and not no_signed,
            batch_size=batch_size)
    records = _similarities(views["true"], views["permuted"], measures, ids, no_signed,
                            map_normalisation)
    for record in records:
        record["method"] = method
    return DataRandomizationResult(method, true_model, permuted_model, records)
