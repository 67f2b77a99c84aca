"""Per-step time of two processes averaging gradients with DistributedDataParallel against zoo's former flat
all-reduce (one all-reduce of every gradient, flattened, after the whole backward).

Both sides train torchvision's ResNet-18 (random weights, 10 classes) on the same fixed batches, with SGD, in
the same two processes (gloo on the CPU, or NCCL with ``--device cuda`` and two GPUs); rounds alternate the
sides so drift hits both alike, and each side's per-step time is its round's median step. DDP starts the
all-reduce of each gradient bucket while the backward still runs; the flat all-reduce waits for the backward
to end. The ratio printed is DDP's time over the flat all-reduce's (below 1: DDP is faster).

    python bench/ddp_speed.py                       # CPU: 2 processes, one thread each
    python bench/ddp_speed.py --rounds 7 --steps 20 --image-size 96
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel


def flat_average(params: list[torch.Tensor], world_size: int) -> None:
    """zoo's former reduction: every gradient flattened into one buffer, all-reduced, averaged, copied back."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: torch.nn.Module, step_model: torch.nn.Module, batches: list, device: torch.device,
               steps: int, after_backward) -> float:
    """The median seconds of ``steps`` training steps (zero_grad, forward, backward, reduction, SGD step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for index in range(steps):
        images, labels = batches[index % len(batches)]
        dist.barrier()
        sync(device)
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(step_model(images), labels).backward()
        after_backward()
        optimizer.step()
        sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def worker(rank: int, args: argparse.Namespace, port: int, results: "mp.Queue") -> None:
    import torchvision

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    use_cuda = args.device == "cuda"
    device = torch.device(f"cuda:{rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device),
                torch.randint(0, 10, (args.batch_size,), generator=generator).to(device)) for _ in range(4)]
    torch.manual_seed(0)
    flat_model = torchvision.models.resnet18(num_classes=10).to(device)
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10).to(device)
    ddp_model = DistributedDataParallel(plain, device_ids=[rank] if use_cuda else None)
    params = list(flat_model.parameters())
    # name: (the model the optimizer steps, the model the step calls, what follows the backward)
    sides = {"flat all-reduce": (flat_model, flat_model, lambda: flat_average(params, 2)),
             "DDP": (plain, ddp_model, lambda: None)}  # DDP reduced during the backward
    for side in sides.values():  # warm-up: allocator, gloo's buffers, DDP's bucket rebuild
        time_steps(*side[:2], batches, device, 3, side[2])
    rounds = []
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        rounds.append({name: time_steps(*sides[name][:2], batches, device, args.steps, sides[name][2])
                       for name in order})
    if rank == 0:
        results.put(rounds)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="per process (default 16)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side and round (default 12)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--port", type=int, default=29611)
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit("--device cuda needs two GPUs")
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=worker, args=(rank, args, args.port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    rounds = results.get()
    for process in processes:
        process.join()
    print(f"2 processes ({args.device}, {args.threads} thread(s) each); ResNet-18, batch {args.batch_size} per "
          f"process, {args.image_size}x{args.image_size}; median step of {args.steps} per side and round")
    for index, times in enumerate(rounds, 1):
        print(f"round {index}: " + "   ".join(f"{name} {1000 * seconds:7.1f} ms" for name, seconds in times.items())
              + f"   ratio {times['DDP'] / times['flat all-reduce']:.3f}")
    ratios = [times["DDP"] / times["flat all-reduce"] for times in rounds]
    print(f"DDP / flat all-reduce: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}) over {len(rounds)} rounds")


if __name__ == "__main__":
    main()
