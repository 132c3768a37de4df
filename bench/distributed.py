"""SyncBatchNorm on CPU processes over gloo (loopback): step time at world size 1 and 2, and bytes per step.

Run ``python -m bench.distributed`` from the repository root. It prints a
markdown table and writes the numbers to ``bench/results/latest-distributed.json``.

What it measures, and why:

- one training step (forward, backward, SGD update) of a small CNN with two
  BatchNorm layers, on a global batch of ``--batch`` 8×8 images, float32;
- world size 1: one process, the whole batch (SyncBatchNorm is then BatchNorm);
- world size 2, two processes, half the batch each, under DistributedDataParallel,
  once with plain BatchNorm (ghost batches: no statistics cross) and once with
  SyncBatchNorm: the difference is what synchronizing the statistics costs.
  torch's own SyncBatchNorm refuses CPU tensors, so there is no torch column;
- every process runs one torch thread, so world size 2 uses two cores;
- each timing is the median (and minimum) over ``--steps`` steps after
  ``--warmup`` steps, as rank 0 sees them (the collectives keep ranks in step);
- bytes: SyncBatchNorm's payload per step and process, counted at the
  ``torch.distributed`` calls it makes (every call and its tensor sizes), next to
  the formula; DDP's gradient payload is counted with a communication hook
  (DDP also broadcasts rank 0's buffers before each forward, which is not counted).

The formula, for layers with C_l channels, W ranks and b bytes per value (the
payload a rank hands to each collective; how many bytes cross the wire depends
on the collective's algorithm: a ring all-reduce sends 2(W-1)/W times its payload):

    forward  all_gather: sum_l (2 C_l + 1) b   (count, C means, C M2; it receives W times that)
    backward all_reduce: sum_l 2 C_l b         (sum dy and sum dy·x_hat per channel)
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CHANNELS = (16, 32)  # the CNN's BatchNorm layers


def make_model(sync):
    import torch
    from torch import nn as tnn

    from normlab.distributed import convert_sync_batchnorm

    torch.manual_seed(0)
    model = tnn.Sequential(
        tnn.Conv2d(1, CHANNELS[0], 3, padding=1), tnn.BatchNorm2d(CHANNELS[0]), tnn.ReLU(),
        tnn.Conv2d(CHANNELS[0], CHANNELS[1], 3, padding=1), tnn.BatchNorm2d(CHANNELS[1]), tnn.ReLU(),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(CHANNELS[1], 10),
    )
    return convert_sync_batchnorm(model) if sync else model


class PayloadCounter:
    """Wraps the collectives normlab.distributed calls and adds up the bytes of the tensors each rank hands in."""

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.bytes, self.calls, self.saved = dist, {}, {}, {}
        for name in ("all_gather_single", "all_gather_into_tensor", "all_reduce"):
            if hasattr(dist, name):
                self.saved[name] = getattr(dist, name)
                setattr(dist, name, self._counting(name, self.saved[name]))

    def _counting(self, name, fn):
        def wrapper(*args, **kwargs):
            sent = args[1] if name.startswith("all_gather") else args[0]  # (output, input) or (tensor,)
            self.bytes[name] = self.bytes.get(name, 0) + sent.numel() * sent.element_size()
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    def reset(self):
        self.bytes, self.calls = {}, {}


def gradient_counter():
    """A DDP communication hook that counts the gradient bytes each rank all-reduces, then averages as DDP does."""
    import torch.distributed as dist

    counted = {"bytes": 0}
    all_reduce = dist.all_reduce  # taken before PayloadCounter wraps it, so gradients are not counted twice

    def hook(state, bucket):
        tensor = bucket.buffer()
        counted["bytes"] += tensor.numel() * tensor.element_size()
        tensor.div_(dist.get_world_size())
        return all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])

    return counted, hook


def worker(sync, batch, warmup, steps):
    """One configuration on this rank; returns rank 0's step times and the counted bytes per step."""
    import torch
    import torch.distributed as dist
    from torch import nn as tnn

    rank, world = dist.get_rank(), dist.get_world_size()
    grads, hook = gradient_counter()
    payload = PayloadCounter()
    model = make_model(sync)
    if world > 1:
        model = tnn.parallel.DistributedDataParallel(model)
        model.register_comm_hook(None, hook)
    else:
        grads = None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    per_rank = batch // world
    x = torch.randn(per_rank, 1, 8, 8, generator=g)
    target = torch.randint(0, 10, (per_rank,), generator=g)
    times = []
    for step in range(warmup + steps):
        if step == warmup:
            payload.reset()
            if grads is not None:
                grads["bytes"] = 0
        start = time.perf_counter()
        optimizer.zero_grad()
        tnn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    times = times[warmup:]
    return {"median_s": statistics.median(times), "min_s": min(times),
            "payload_bytes": {k: v / steps for k, v in payload.bytes.items()},
            "calls": {k: v / steps for k, v in payload.calls.items()},
            "gradient_bytes": None if grads is None else grads["bytes"] / steps,
            "parameters": sum(p.numel() for p in model.parameters())}


def formula_bytes(itemsize=4):
    return {"all_gather": sum((2 * c + 1) * itemsize for c in CHANNELS),
            "all_reduce": sum(2 * c * itemsize for c in CHANNELS)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    from normlab.distributed import launch

    rows = []
    for world, sync, label in ((1, True, "1 process, whole batch"), (2, False, "2 processes, DDP + BatchNorm"),
                               (2, True, "2 processes, DDP + SyncBatchNorm")):
        result = launch(worker, world, sync, args.batch, args.warmup, args.steps, timeout=600)[0]
        rows.append({"world_size": world, "sync": sync, "label": label, **result})

    base = rows[0]["median_s"]
    ghost = rows[1]["median_s"]
    formula = formula_bytes()
    print(f"SyncBatchNorm step time (CNN, BatchNorm channels {CHANNELS}, global batch {args.batch}, float32, "
          f"1 torch thread per process, median of {args.steps} steps)\n")
    print("| configuration | median ms | min ms | vs 1 process | vs DDP + BatchNorm | "
          "SyncBN bytes/step/rank (gather + reduce) | DDP gradient bytes/step/rank |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        sent = row["payload_bytes"]
        gather = sum(v for k, v in sent.items() if k.startswith("all_gather"))
        reduce = sent.get("all_reduce", 0)
        sync_bytes = f"{gather:.0f} + {reduce:.0f}" if sent else "0"
        grad = "-" if row["gradient_bytes"] is None else f"{row['gradient_bytes']:.0f}"
        print(f"| {row['label']} | {1e3 * row['median_s']:.2f} | {1e3 * row['min_s']:.2f} | "
              f"{row['median_s'] / base:.2f}x | {row['median_s'] / ghost:.2f}x | {sync_bytes} | {grad} |")
    print(f"\nformula (per step and rank): all_gather sum(2C+1)*4 = {formula['all_gather']} B, "
          f"all_reduce sum(2C)*4 = {formula['all_reduce']} B; "
          f"DDP gradients: {rows[0]['parameters']} parameters * 4 = {4 * rows[0]['parameters']} B")
    measured = rows[2]["payload_bytes"]
    gather = sum(v for k, v in measured.items() if k.startswith("all_gather"))
    print(f"measured (SyncBatchNorm, world size 2): all_gather {gather:.0f} B, all_reduce "
          f"{measured.get('all_reduce', 0):.0f} B, in {sum(rows[2]['calls'].values()):.0f} calls per step")

    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "processor": platform.processor()},
               "settings": vars(args), "channels": CHANNELS, "formula_bytes": formula, "rows": rows}
        (RESULTS / "latest-distributed.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
