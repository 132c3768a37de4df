"""normlab on CuPy (generic path, and fused kernels for BatchNorm2d) against torch CUDA (cuDNN).

Run ``python -m bench.gpu`` or ``python -m bench.run --device cuda`` on a machine
with a CUDA GPU, CuPy (``pip install -e '.[gpu]'``) and a CUDA build of torch.
It prints one markdown table and writes the numbers, with a description of the
GPU, to ``bench/results/gpu-<date>.json`` and ``bench/results/latest-gpu.json``.

How it measures, and why:

- the rows are the CPU table's (see `bench.run`) plus BatchNorm2d (64, 256, 56, 56);
  BatchNorm2d rows run twice, through the generic path and the fused kernels
  (``normlab.paths.enabled``); the other rows use the generic path;
- a sample is a loop of calls long enough to last about a millisecond, bracketed
  by CUDA events on the stream the library launches on (CuPy's current stream
  for normlab, torch's current stream for torch), so host overhead that does not
  overlap with GPU work counts, as it does in training; each timing is the median
  of ``--repeats`` samples (default 20) after a warm-up, which also compiles the kernels;
- normlab and torch samples alternate, as in `bench.run`;
- the bandwidth column divides the fewest bytes the pass must move (forward:
  read x, write y; backward: read x, read dy, write dx; both: all five) by the
  time, as a fraction of a device-to-device copy of 256 MiB measured here;
- before timing, each normlab row's forward output is compared with torch's,
  and the largest difference is stored with the row.

Issue 6's targets: fused forward+backward at most 1.2x torch, and at least 60%
of copy bandwidth at the large shapes. The summary lines say whether they are met.
"""
import argparse
import datetime as dt
import math
import platform
import statistics
import sys

import numpy as np

from bench.run import ARRAYS_MOVED, PASSES, format_table, save_results

LARGE_SHAPE = (64, 256, 56, 56)
COPY_BYTES = 256 * 2**20


def require_gpu():
    """CuPy and torch, with a CUDA device each; otherwise exit with a message that says what is missing."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
    except Exception as exc:  # ImportError, or a CUDA driver/runtime error
        sys.exit(f"bench.gpu needs a CUDA GPU with CuPy (pip install -e '.[gpu]'): {exc}")
    try:
        import torch
    except ImportError:
        sys.exit("bench.gpu needs torch with CUDA, the reference it compares against")
    if not torch.cuda.is_available():
        sys.exit(f"bench.gpu needs a CUDA build of torch; this torch ({torch.__version__}) sees no GPU")
    return cupy, torch


class Timer:
    """Median seconds per call of zero-argument callables, timed with CUDA events of one library."""

    def __init__(self, make_event, elapsed_ms, synchronize):
        self.make_event, self.elapsed_ms, self.synchronize = make_event, elapsed_ms, synchronize

    def loops_for(self, fn, min_sample_s=1e-3):
        fn()  # warm-up: compiles kernels, fills allocator caches
        self.synchronize()
        once = self.sample(fn, 1)
        return max(1, math.ceil(min_sample_s / max(once, 1e-7)))

    def sample(self, fn, loops):
        start, end = self.make_event(), self.make_event()
        start.record()
        for _ in range(loops):
            fn()
        end.record()
        end.synchronize()
        return self.elapsed_ms(start, end) / 1e3 / loops


def timers(cupy, torch):
    cupy_timer = Timer(cupy.cuda.Event, cupy.cuda.get_elapsed_time, cupy.cuda.Device().synchronize)
    torch_timer = Timer(lambda: torch.cuda.Event(enable_timing=True), lambda s, e: s.elapsed_time(e),
                        torch.cuda.synchronize)
    return cupy_timer, torch_timer


def time_interleaved(pairs, repeats):
    """``pairs``: [(timer, fn), ...]; their median seconds per call, sampled in alternating order."""
    loops = [timer.loops_for(fn) for timer, fn in pairs]
    samples = [[] for _ in pairs]
    order = list(range(len(pairs)))
    for _ in range(repeats):
        for i in order:
            timer, fn = pairs[i]
            samples[i].append(timer.sample(fn, loops[i]))
        order.reverse()
    return [statistics.median(s) for s in samples]


def copy_bandwidth(cupy, timer, repeats):
    """Bytes per second of a device-to-device copy of `COPY_BYTES` (read + write counted)."""
    src = cupy.ones(COPY_BYTES // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    t = time_interleaved([(timer, lambda: cupy.copyto(dst, src))], repeats)[0]
    return 2 * src.nbytes / t


def make_cases(cupy, torch, rng):
    """``[(op, shape, variant, fused, nl_forward, nl_backward, torch_forward, torch_inputs, dy_torch)]``."""
    import torch.nn.functional as F

    import normlab as nl

    from normlab import paths
    cases = []

    def add(op, shape, channels, nl_fwd, nl_bwd, torch_fwd, affine=True, running=False, variants=(("generic", False),)):
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        w = (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32) if affine else None
        b = (0.1 * rng.standard_normal(channels)).astype(np.float32) if affine else None
        rm, rv = (np.zeros(channels, np.float32), np.ones(channels, np.float32)) if running else (None, None)
        on_gpu = [None if a is None else cupy.asarray(a) for a in (x, w, b, rm, rv, dy)]
        xc, wc, bc, rmc, rvc, dyc = on_gpu

        def tensor(a, grad=False):
            return None if a is None else torch.from_numpy(a.copy()).cuda().requires_grad_(grad)

        xt, wt, bt = tensor(x, True), tensor(w, affine), tensor(b, affine)
        rmt, rvt = tensor(rm), tensor(rv)
        for variant, fused in variants:
            def nl_forward(fused=fused):
                paths.enabled = fused
                return nl_fwd(xc, wc, bc, rmc, rvc)

            def nl_backward(cache, fused=fused):
                paths.enabled = fused
                return nl_bwd(dyc, cache)

            cases.append(dict(
                op=op, shape=shape, variant=variant, nl_forward=nl_forward, nl_backward=nl_backward,
                torch_forward=lambda: torch_fwd(xt, wt, bt, rmt, rvt),
                torch_inputs=[t for t in (xt, wt, bt) if t is not None],
                dy_torch=torch.from_numpy(dy).cuda(),
            ))

    def bn_nl(x, w, b, rm, rv):
        return nl.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, training=True)

    def bn_torch(x, w, b, rm, rv):
        return F.batch_norm(x, rm, rv, w, b, training=True)

    both = (("generic", False), ("fused", True))
    for shape in ((32, 64, 32, 32), (8, 256, 14, 14), LARGE_SHAPE):
        add("BatchNorm2d", shape, shape[1], bn_nl, nl.batch_norm_backward, bn_torch, running=True, variants=both)
    add("BatchNorm1d", (256, 1024), 1024, bn_nl, nl.batch_norm_backward, bn_torch, running=True)
    add("LayerNorm", (256, 1024), 1024,
        lambda x, w, b, *_: nl.layer_norm_forward(x, (1024,), w, b), nl.layer_norm_backward,
        lambda x, w, b, *_: F.layer_norm(x, (1024,), w, b))
    add("GroupNorm(32)", (16, 64, 32, 32), 64,
        lambda x, w, b, *_: nl.group_norm_forward(x, 32, w, b), nl.group_norm_backward,
        lambda x, w, b, *_: F.group_norm(x, 32, w, b))
    add("InstanceNorm2d", (16, 64, 32, 32), 64,
        lambda x, w, b, *_: nl.instance_norm_forward(x, w, b), nl.instance_norm_backward,
        lambda x, w, b, *_: F.instance_norm(x, weight=w, bias=b), affine=False)
    return cases


def pass_functions(case, torch):
    """For each pass, a (normlab, torch) pair of zero-argument callables."""
    nl_cache = case["nl_forward"]()[1]
    torch_y = case["torch_forward"]()

    def torch_backward():
        return torch.autograd.grad(torch_y, case["torch_inputs"], case["dy_torch"], retain_graph=True)

    return {
        "forward": (case["nl_forward"], case["torch_forward"]),
        "backward": (lambda: case["nl_backward"](nl_cache), torch_backward),
        "forward+backward": (
            lambda: case["nl_backward"](case["nl_forward"]()[1]),
            lambda: torch.autograd.grad(case["torch_forward"](), case["torch_inputs"], case["dy_torch"]),
        ),
    }


def max_difference(case, cupy):
    """Largest |normlab y - torch y| of one forward pass (running buffers move; the output is what is compared)."""
    y_nl = cupy.asnumpy(case["nl_forward"]()[0])
    y_torch = case["torch_forward"]().detach().cpu().numpy()
    return float(np.max(np.abs(y_nl - y_torch)))


def machine_description(cupy, torch):
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        "gpu": name.decode() if isinstance(name, bytes) else str(name),
        "multiprocessors": props["multiProcessorCount"],
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cupy": cupy.__version__,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run(repeats, only=None):
    cupy, torch = require_gpu()
    from normlab import paths
    cupy_timer, torch_timer = timers(cupy, torch)
    machine = machine_description(cupy, torch)
    copy_bw = copy_bandwidth(cupy, cupy_timer, repeats)
    rows = []
    try:
        for case in make_cases(cupy, torch, np.random.default_rng(0)):
            if only and only.lower() not in case["op"].lower():
                continue
            diff = max_difference(case, cupy)
            fns = pass_functions(case, torch)
            for name in PASSES:
                nl_fn, torch_fn = fns[name]
                t_nl, t_torch = time_interleaved([(cupy_timer, nl_fn), (torch_timer, torch_fn)], repeats)
                moved = ARRAYS_MOVED[name] * math.prod(case["shape"]) * 4
                rows.append({
                    "op": f"{case['op']} [{case['variant']}]",
                    "shape": list(case["shape"]),
                    "variant": case["variant"],
                    "pass": name,
                    "normlab_ms": t_nl * 1e3,
                    "torch_ms": t_torch * 1e3,
                    "ratio": t_nl / t_torch,
                    "normlab_bw_fraction": moved / t_nl / copy_bw,
                    "torch_bw_fraction": moved / t_torch / copy_bw,
                    "min_bytes": moved,
                    "max_abs_diff_y_vs_torch": diff,
                })
    finally:
        paths.enabled = True
    return {
        "machine": machine,
        "dtype": "float32",
        "repeats": repeats,
        "timing": "CUDA events around a loop of calls, median of the samples",
        "copy_bytes_per_s": copy_bw,
        "copy_array_bytes": COPY_BYTES,
        "rows": rows,
    }


def targets(rows):
    """Lines saying whether issue 6's targets are met by the fused BatchNorm2d rows."""
    fused = [r for r in rows if r["variant"] == "fused" and r["pass"] == "forward+backward"]
    if not fused:
        return []
    worst = max(fused, key=lambda r: r["ratio"])
    lines = [f"fused forward+backward, worst ratio to torch: {worst['ratio']:.2f} at {tuple(worst['shape'])} "
             f"(target <= 1.2: {'met' if worst['ratio'] <= 1.2 else 'NOT met'})"]
    for r in fused:
        if tuple(r["shape"]) == LARGE_SHAPE:
            ok = r["normlab_bw_fraction"] >= 0.6
            lines.append(f"fused forward+backward at {LARGE_SHAPE}: {r['normlab_bw_fraction']:.0%} of copy bandwidth "
                         f"(target >= 60%: {'met' if ok else 'NOT met'})")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda",), default="cuda", help="accepted for bench.run's sake")
    parser.add_argument("--repeats", type=int, default=20, help="samples per timing, at least 7 (default 20)")
    parser.add_argument("--only", help="run only the ops whose name contains this text (nothing is saved)")
    parser.add_argument("--no-save", action="store_true", help="print the table without writing JSON")
    args = parser.parse_args(argv)
    if args.repeats < 7:
        parser.error("--repeats must be at least 7")

    result = run(args.repeats, args.only)
    m = result["machine"]
    print(f"{m['gpu']} ({m['multiprocessors']} SMs), CUDA runtime {m['cuda_runtime']}, cupy {m['cupy']}, "
          f"torch {m['torch']} (cuDNN {m['cudnn']}), {m['date']}")
    print(f"device-to-device copy of {result['copy_array_bytes'] // 2**20} MiB: "
          f"{result['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write)\n")
    print(format_table(result["rows"]))
    print()
    for line in targets(result["rows"]):
        print(line)

    if not (args.no_save or args.only):
        save_results(result, "gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
