"""Run by tests/test_ddp.py under torchrun: several zoo runs in one job, their DDP reductions counted.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_job.py OUT.json RUNS.json``
does each entry of RUNS.json in turn: ``{"config": {TrainConfig fields, run_dir included}, "resume": bool,
"count": bool}``. A counted run has every network's gradient reductions counted by a DDP communication hook
(one count per backward that reduces the network: its first bucket's), in place of the hook its config
names; rank 0 writes, for each run, ``{"counts": {network path: count} (empty when not counted),
"static_graph": {network path: whether DDP runs it as a static graph}, "comm_hook": {network path: the hook
zoo registered, or None}}`` to OUT.json.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: E402

from zoo.config import TrainConfig  # noqa: E402
from zoo.engine import data_parallel, distributed  # noqa: E402
from zoo.engine.rundir import prepare_new  # noqa: E402
from zoo.engine.trainer import Trainer  # noqa: E402
from zoo.registry import discover  # noqa: E402

REGISTER = data_parallel.register_comm_hook
counters = []


def counting_hook(state, bucket):  # no annotations: DDP checks them against its own types
    """DDP's plain all-reduce, counted once per reduction of the network (its first bucket)."""
    if bucket.index() == 0:
        state["count"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def register_counting(network, name):
    state = {"count": 0, "network": network}
    counters.append(state)
    network.register_comm_hook(state, counting_hook)


def train(entry, registry, context):
    """One run of the job: new or resumed; its networks' reduction counts when counted."""
    counters.clear()
    counted = entry.get("count", False)
    data_parallel.register_comm_hook = register_counting if counted else REGISTER
    config = TrainConfig(**entry["config"], **({"ddp_comm_hook": "fp16"} if counted else {}))
    run_dir = Path(config.run_dir)
    if context.is_main and not entry.get("resume"):
        prepare_new(run_dir, overwrite=True)
    distributed.barrier(context)
    trainer = Trainer(config, registry, run_dir, resume=bool(entry.get("resume")), dist_context=context)
    trainer.fit()
    networks = trainer.run.stepper.parallel.networks
    counts = {path: next(c["count"] for c in counters if c["network"] is network)
              for path, network in networks.items()} if counted else {}
    return {"counts": counts, "static_graph": {path: network.static_graph for path, network in networks.items()},
            "comm_hook": {path: getattr(network, "comm_hook_name", None) for path, network in networks.items()}}


def main():
    out, entries = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    registry, context = discover(), distributed.setup("cpu")
    results = [train(entry, registry, context) for entry in entries]
    if context.is_main:
        out.write_text(json.dumps(results))
    distributed.teardown(context)


if __name__ == "__main__":
    main()
