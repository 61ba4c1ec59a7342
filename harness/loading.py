"""Decoding and preprocessing image batches, overlapped with the model's work.

``load_batches`` yields, in order, each requested batch as the model's input ``[N, C, S, S]``
(and its ground-truth masks when asked) on the device. With ``workers > 0`` a
``torch.utils.data.DataLoader`` decodes, resizes and normalises the next batches in worker
processes while the device computes, into pinned memory when the device is CUDA, and the copy to
the device is asynchronous (``non_blocking``); with ``workers = 0`` the same work runs in the
main process. Either way the tensors are identical: the same function makes them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from harness.datasets import Sample, load_masks
from harness.images import preprocess
from harness.models import ModelInfo


def prepare_batch(batch: Sequence[Sample], info: ModelInfo, masks: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch on the CPU: the model input ``[N, C, S, S]`` and, when asked, bool masks
    ``[N, S, S]``."""
    ids = [sample.id for sample in batch]
    x = preprocess([sample.load() for sample in batch], info, ids=ids)
    return x, load_masks(batch, info) if masks else None


class _Batches(TorchDataset):
    def __init__(self, batches, indices, info, masks):
        self.batches, self.indices, self.info, self.masks = batches, indices, info, masks

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        with warnings.catch_warnings(record=True) as caught:  # re-raised in the main process
            warnings.simplefilter("always")
            x, masks = prepare_batch(self.batches[index], self.info, self.masks)
        return index, x, masks, [str(w.message) for w in caught]


def load_batches(batches: Sequence[Sequence[Sample]], indices: Sequence[int], info: ModelInfo,
                 *, device: str | torch.device = "cpu", workers: int = 0,
                 masks: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """``(batch index, x on device, masks or None)`` for each of ``indices``, in that order."""
    device = torch.device(device)
    if workers <= 0:
        for index in indices:
            x, batch_masks = prepare_batch(batches[index], info, masks)
            yield index, x.to(device), None if batch_masks is None else batch_masks.to(device)
        return
    loader = DataLoader(_Batches(batches, list(indices), info, masks), batch_size=None,
                        shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2, persistent_workers=False)
    for index, x, batch_masks, caught in loader:
        for message in caught:
            warnings.warn(message, stacklevel=2)
        x = x.to(device, non_blocking=True)
        if batch_masks is not None:
            batch_masks = batch_masks.to(device, non_blocking=True)
        yield index, x, batch_masks
