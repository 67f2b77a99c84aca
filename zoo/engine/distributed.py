"""Data-parallel training on torch.distributed: process groups and agreement between processes.

Launched by torchrun (or ``zoo train --nproc-per-node N``, which runs torchrun),
every process trains on its own shard of each epoch's order; DistributedDataParallel
averages the gradients (``data_parallel.py``). NCCL on GPUs, gloo on the CPU; a
separate gloo group carries the small control messages (stop requests) so
they never force a GPU sync.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from zoo.errors import UsageError


@dataclasses.dataclass
class DistContext:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, samples and checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_gpu_count(device_name: str, processes: int) -> None:
    """A UsageError when ``processes`` on this machine would train on CUDA with fewer GPUs than processes."""
    if device_name == "cpu" or not torch.cuda.is_available() or processes <= torch.cuda.device_count():
        return
    count = torch.cuda.device_count()
    raise UsageError(f"{processes} processes on this machine need {processes} GPUs (one each) but {count} "
                     f"{'is' if count == 1 else 'are'} visible; lower --nproc-per-node to {count}, "
                     f"or train on --device cpu.")


def check_sync_bn(device_type: str) -> None:
    """A UsageError for --sync-bn on processes that do not train on CUDA (torch's SyncBatchNorm is GPU only)."""
    if device_type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only), not "
                         f"{device_type}; drop --sync-bn to keep BatchNorm statistics per process.")


def setup(device_name: str) -> DistContext:
    """Join the process group torchrun describes; NCCL for CUDA devices, gloo otherwise."""
    if not launched_by_torchrun():
        return DistContext()
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_gpu_count(device_name, int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    control = dist.new_group(backend="gloo") if use_cuda else dist.group.WORLD
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, control)


def teardown(context: DistContext) -> None:
    """Leave the process group."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def average_tensor(value: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of a tensor over all processes (losses at log steps)."""
    reduced = value.clone()
    dist.all_reduce(reduced)
    return reduced / context.world_size


def max_flag(value: int, context: DistContext) -> int:
    """The largest of an integer over all processes (a stop request anywhere stops everyone)."""
    flag = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=context.control)
    return int(flag.item())


def gather_objects(value: Any, context: DistContext) -> list[Any]:
    """Every process's ``value``, in rank order, on every process."""
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value, group=context.control)
    return gathered


def broadcast_object(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every process."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=context.control)
    return box[0]


def barrier(context: DistContext) -> None:
    """Wait for every process."""
    if context.enabled:
        dist.barrier(group=context.control)
