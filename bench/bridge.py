"""A small CNN's training step on the CPU: torch's own BatchNorm2d against normlab's through the bridge.

``python -m bench.bridge``. Two conv+BatchNorm blocks, batch 64, 3×32×32 inputs, SGD; the two
models start from the same weights and run interleaved in this process (median of the samples, and
the fastest). Samples alternate, so each native sample has a bridged neighbour taken within the same
fraction of a second: the median of those paired ratios is the figure least moved by a machine whose
speed drifts during the run. The bridged model is ``normlab.torch_bridge.convert_norms`` of a copy of the native one,
so its norm layers run normlab's forward and hand-derived backward on NumPy views of the tensors.
"""
import argparse
import copy
import datetime as dt
import json
import os
import statistics
import sys

from bench.run import RESULTS, sample_interleaved


def small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    )


def step_function(model, x, y):
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def main(argv=None):
    import torch

    from normlab import torch_bridge

    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (64,), generator=generator)
    native = small_cnn()
    bridged = torch_bridge.convert_norms(copy.deepcopy(native))
    steps = [step_function(native, x, y), step_function(bridged, x, y)]
    samples = sample_interleaved(steps, args.repeats, min_sample_s=0.05)
    t_native, t_bridged = (statistics.median(s) for s in samples)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.repeats} interleaved samples")
    print(f"training step, native BatchNorm2d: {t_native * 1e3:.2f} ms (fastest {min(samples[0]) * 1e3:.2f})")
    print(f"training step, normlab bridge   : {t_bridged * 1e3:.2f} ms (fastest {min(samples[1]) * 1e3:.2f})")
    paired = sorted(b / n for n, b in zip(*samples))
    quartiles = statistics.quantiles(paired, n=4)
    print(f"bridged/native: {t_bridged / t_native:.2f} (medians), {min(samples[1]) / min(samples[0]):.2f} (fastest)")
    print(f"paired ratios: median {statistics.median(paired):.2f}, quartiles {quartiles[0]:.2f} to "
          f"{quartiles[2]:.2f}; below 1 in {sum(r < 1 for r in paired)} of {len(paired)}")
    if not args.no_save:
        result = {"native_ms": t_native * 1e3, "bridged_ms": t_bridged * 1e3,
                  "native_best_ms": min(samples[0]) * 1e3, "bridged_best_ms": min(samples[1]) * 1e3,
                  "ratio": t_bridged / t_native, "best_ratio": min(samples[1]) / min(samples[0]),
                  "paired_ratio": statistics.median(paired), "paired_quartiles": [quartiles[0], quartiles[2]],
                  "paired_below_one": sum(r < 1 for r in paired), "pairs": len(paired),
                  "repeats": args.repeats, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                  "load_average_at_start": load_before,
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        (RESULTS / "latest-bridge.json").write_text(json.dumps(result, indent=1) + "\n")
        print("wrote bench/results/latest-bridge.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
