"""Efficient MPRT on MNIST LeNet against the published table of Hedström et al. 2024.

The reference notebook (annahedstroem/sanity-checks-revisited,
``nbs/Tutorial-MPRT-vs-SmoothMPRT-vs-EfficientMPRT-Benchmarking.ipynb``, cell 15) reports eMPRT
on MNIST LeNet as mean ± standard deviation over 1000 test images: Gradient 0.216 ± 0.099,
Saliency 0.250 ± 0.127, SmoothGrad 0.200 ± 0.117, IntegratedGradients 0.022 ± 0.049, the random
control 0.000 ± 0.000. Its settings (cell 6 and the scoring loop of cell 8): Quantus
``EfficientMPRT`` with bottom-up layer order, ``discrete_entropy`` with 100 bins, second-moment
normalisation, ``abs=True`` (set for every method in the loop), the labels as targets; methods
by zennit: Gradient (and Saliency: the same zennit ``Gradient`` attributor), SmoothGrad
(``n_iter=20, noise_level=0.1``), IntegratedGradients (``n_iter=20``, zero baseline).

Here: the harness's ``efficient_mprt`` with those settings on the same LeNet weights and MNIST
test images, read from MetaQuantus' ``tests/assets`` (``models/mnist_lenet``: a state dict read
with ``weights_only=True``; ``test_sets/mnist_test_set.npy``: a pickled dict of arrays, read by an
unpickler that resolves only numpy's array reconstruction, so nothing in the file executes).
That test set holds the first 50 MNIST test images, not the paper's 1000. Methods: ``vanilla``
(|gradient|, one channel: zennit's Gradient with abs), ``smoothgrad`` (``n=20, noise=0.1``,
averaging gradients; zennit leaves its last sample noise-free), ``integrated_gradients``
(``n_steps=20``, zero baseline, ``rule="right"``: zennit's alphas k/20) and the ``random``
control. The blocks (conv1, conv2, fc1, fc2, fc3) are re-initialised with the harness's seeds
(``--seeds``), not Quantus' (every layer after ``torch.manual_seed(43)``).

A second set of rows replaces the harness's re-initialisation by Quantus' own (every module with
``reset_parameters`` re-initialised after ``torch.manual_seed(42 + 1)``, the paper's randomized
model, given the same torch generator), with the harness's maps and entropy.

A value reproduces the table when |mean - published mean| <= published standard deviation (the
stated spread). Prints a table and writes JSON. Usage:

    git clone https://github.com/annahedstroem/MetaQuantus
    .venv/bin/python benchmarks/emprt_mnist_lenet.py --assets MetaQuantus/tests/assets \\
        [--seeds 0 1 2] [--out emprt_mnist_lenet.json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import harness
from harness.models import attach_info, prepare
from harness.sanity import efficient_mprt
from harness.sanity.efficient_mprt import discrete_entropy
from harness.sanity.revisited import preprocess_maps

PUBLISHED = {  # method: (mean, std) over 1000 MNIST test images, cell 15 of the notebook
    "Gradient": (0.2164980709, 0.0987235732),
    "Saliency": (0.2504863141, 0.1269425047),
    "SmoothGrad": (0.1999675553, 0.1172378403),
    "IntegratedGradients": (0.0216683503, 0.0486227626),
    "Control Var. Random Uniform": (0.0, 0.0),
}
OURS = {  # the harness method standing for each published row, and its parameters
    "Gradient": ("vanilla", {}),
    "Saliency": ("vanilla", {}),
    "SmoothGrad": ("smoothgrad", {"n": 20, "noise": 0.1, "seed": 0}),
    "IntegratedGradients": ("integrated_gradients", {"n_steps": 20, "baseline": "zero",
                                                     "rule": "right"}),
    "Control Var. Random Uniform": ("random", {"seed": 0}),
}


class LeNet(nn.Module):
    """LeNet-5 as MetaQuantus defines it (``metaquantus/helpers/models.py``): conv 1->6 (5x5,
    padding 2), max-pool 2, conv 6->16 (5x5), max-pool 2, fc 400-120-84-10, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.max_pool_1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.max_pool_2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.max_pool_1(torch.relu(self.conv1(x)))
        x = self.max_pool_2(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


class ArraysOnly(pickle.Unpickler):
    """Resolves numpy's array reconstruction and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def load_assets(folder: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    state = torch.load(folder / "models" / "mnist_lenet", map_location="cpu", weights_only=True)
    model = LeNet()
    model.load_state_dict(state)
    model = prepare(attach_info(model, name="lenet_mnist", weights="MetaQuantus mnist_lenet",
                                mean=(0.0,), std=(1.0,), input_size=28, num_classes=10,
                                cam_layer="conv2"))
    with open(folder / "test_sets" / "mnist_test_set.npy", "rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        data = ArraysOnly(handle, encoding="latin1").load().item()
    return model, torch.from_numpy(data["x_batch"]).float(), torch.from_numpy(data["y_batch"])


def quantus_randomized(model: nn.Module, seed: int = 42) -> nn.Module:
    """Quantus 0.6 ``PyTorchModel.get_random_layer_generator`` run to its end (bottom-up,
    cascading): every module with ``reset_parameters``, after ``torch.manual_seed(seed + 1)``."""
    import copy

    randomized = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        for _, module in randomized.named_modules():
            if hasattr(module, "reset_parameters"):
                torch.manual_seed(seed + 1)
                module.reset_parameters()
    return prepare(randomized)


def emprt_with(model: nn.Module, randomized: nn.Module, method: str, params: dict,
               x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """eMPRT per image from the two models' maps (abs, second moment, 100 bins)."""
    entropies = []
    for network in (model, randomized):
        maps = harness.methods.saliency_batched(method, network, x, labels, batch_size=64,
                                                method_params=params)
        values = preprocess_maps(maps.double().numpy(), normalise="second_moment", abs=True)
        entropies.append(np.array([discrete_entropy(v, 100) for v in values]))
    return (entropies[1] - entropies[0]) / entropies[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, required=True,
                        help="MetaQuantus' tests/assets folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("emprt_mnist_lenet.json"))
    args = parser.parse_args()
    model, x, labels = load_assets(args.assets)
    with torch.inference_mode():
        accuracy = float((model(x).argmax(1) == labels).float().mean())
    print(f"LeNet on {len(x)} MNIST test images: accuracy {accuracy:.3f}")
    blocks = [b.label for b in model.harness_info.blocks]
    rows, start = [], time.time()
    for name, (method, params) in OURS.items():
        values = []
        for seed in args.seeds:
            result = efficient_mprt(model, method, x, labels, method_params=params, abs=True,
                                    normalise="second_moment", n_bins=100, seed=seed,
                                    order="bottom_up", batch_size=64)
            values.append(result.values)
        values = np.stack(values)  # [seeds, images]
        mean, std = float(values.mean()), float(values.std())
        published_mean, published_std = PUBLISHED[name]
        quantus_values = emprt_with(model, quantus_randomized(model), method, params, x, labels)
        rows.append({"row": name, "method": method, "params": params,
                     "mean": mean, "std_over_images": std,
                     "mean_per_seed": [float(v) for v in values.mean(axis=1)],
                     "quantus_layers_mean": float(quantus_values.mean()),
                     "quantus_layers_std": float(quantus_values.std()),
                     "published_mean": published_mean, "published_std": published_std,
                     "within_spread": bool(abs(mean - published_mean) <= published_std + 1e-12),
                     "quantus_layers_within_spread": bool(
                         abs(quantus_values.mean() - published_mean) <= published_std + 1e-12)})
    print(f"{'published row':28s} {'harness seeds':>15s} {'Quantus layers':>15s} "
          f"{'published':>15s}  within spread")
    for row in rows:
        print(f"{row['row']:28s} {row['mean']:6.3f} ± {row['std_over_images']:.3f} "
              f"{row['quantus_layers_mean']:6.3f} ± {row['quantus_layers_std']:.3f} "
              f"{row['published_mean']:6.3f} ± {row['published_std']:.3f}  "
              f"{row['within_spread']}, {row['quantus_layers_within_spread']}"
              f"  (per seed: {', '.join(f'{v:.3f}' for v in row['mean_per_seed'])})")
    report = {"benchmark": "efficient_mprt on MNIST LeNet (Hedström et al. 2024)",
              "images": len(x), "accuracy": accuracy, "blocks": blocks, "seeds": args.seeds,
              "settings": {"order": "bottom_up", "n_bins": 100, "normalise": "second_moment",
                           "abs": True, "targets": "labels"},
              "rows": rows, "seconds": time.time() - start,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "harness": harness.__version__}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
