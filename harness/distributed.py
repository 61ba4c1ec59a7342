"""Runs across processes, GPUs and machines with ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node K -m harness run CONFIG`` (and ``harness run`` wherever torchrun's
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` are set) starts K ranks. The harness writes no
launcher of its own: torchrun's rendezvous gives multi-node runs (``--nnodes``,
``--rdzv-endpoint``), and its agent stops every rank when one fails.

- Work units (image batch x method) are dealt round-robin in their canonical order: unit ``u``
  goes to rank ``u % world_size``. Every random choice is seeded by the config and the image (its
  id or its values), never by the rank, so a unit's records are the same whatever rank computes it,
  and so the run's records are the same whatever the world size.
- Each rank streams its own shard of records (``harness.store``); the ranks do not talk while they
  compute. At the end they meet once (a barrier); rank 0 merges the shards in canonical order and
  alone writes tables, figures and MLflow.
- Backend: NCCL when the device is CUDA, gloo on CPUs. ``device: auto`` is ``cuda:LOCAL_RANK``
  where CUDA exists, else the CPU; ``device: cuda`` under torchrun also means ``cuda:LOCAL_RANK``.
- A rank that cannot join the rendezvous within ``HARNESS_DIST_TIMEOUT`` seconds (default 600)
  stops with an error naming the address it tried and what to change. That timeout bounds the
  joining only: at the end a rank that finished its share waits for the others (up to
  ``WAIT``, on a gloo group of its own), however long they still compute; ranks finish hours
  apart at paper scale, and on a resume one rank may hold every missing unit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from harness.errors import DistributedError

WAIT = timedelta(days=7)  # the longest a rank waits at a barrier for the others to finish
_waiting: dist.ProcessGroup | None = None  # the group of that wait (gloo, timeout WAIT)


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def mine(self, units: Sequence) -> list:
        """This rank's share of ``units``: every ``size``-th from position ``rank``."""
        return list(units[self.rank::self.size])


ONE_PROCESS = World()  # a run without torchrun


def detect() -> World:
    """The world torchrun describes in the environment (a single process without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise DistributedError(f"torchrun's environment is malformed ({error}): RANK, WORLD_SIZE "
                               "and LOCAL_RANK must be integers") from None
    if size < 1 or not 0 <= rank < size:
        raise DistributedError(f"RANK={rank} is not within WORLD_SIZE={size}")
    return World(rank, size, local)


def resolve_device(device: str, world: World) -> str:
    """``auto`` -> ``cuda:LOCAL_RANK`` where CUDA exists, else ``cpu``; ``cuda`` under several
    ranks -> ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    if device == "auto":
        return f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world.distributed:
        return f"cuda:{world.local_rank}"
    return device


def init(world: World, device: str) -> None:
    """Join the process group (NCCL for CUDA devices, gloo otherwise)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    seconds = float(os.environ.get("HARNESS_DIST_TIMEOUT", "600"))
    address = (f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=seconds),
                                rank=world.rank, world_size=world.size)
    except Exception as error:  # noqa: BLE001 - torch raises several types; say what to change
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DistributedError(
            f"rank {world.rank} of {world.size} could not join the rendezvous at {address} within "
            f"{seconds:.0f} s ({first}). Check that every node runs the same torchrun command with "
            "the same --rdzv-endpoint (or --master-addr/--master-port), that the address is "
            "reachable from this machine and the port open; HARNESS_DIST_TIMEOUT sets the "
            "wait") from None
    global _waiting
    # made now, while every rank is here: a gloo group connects its ranks through the store,
    # whose timeout is the rendezvous's
    _waiting = dist.new_group(backend="gloo", timeout=WAIT)


def barrier(world: World) -> None:
    """Wait for every rank (as long as ``WAIT``: the others may still be computing)."""
    if world.distributed and dist.is_initialized():
        dist.barrier(group=_waiting)


def agree(world: World, message: str | None) -> str | None:
    """Share a failure between ranks: every rank gets the first rank's message (None when no rank
    failed), so all stop with the same named error instead of waiting for each other."""
    if not world.distributed or not dist.is_initialized():
        return message
    messages: list[str | None] = [None] * world.size
    dist.all_gather_object(messages, message)
    return next((m for m in messages if m is not None), None)


def close(world: World) -> None:
    global _waiting
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
        _waiting = None
