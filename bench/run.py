"""normlab against torch on the CPU: forward, backward and forward+backward of every norm.

Run ``make bench`` (or ``python -m bench.run``). It prints one markdown table and
writes the same numbers, with a description of the machine, to
``bench/results/cpu-<date>.json`` and ``bench/results/latest-cpu.json``.

How it measures, and why:

- both libraries run in this one process on the same arrays, interleaved
  (normlab, torch, torch, normlab, ...), so a machine that other work slows
  down slows both sides alike and the ratio stays fair;
- each timing is the median of ``--repeats`` samples (at least 7) taken after a
  warm-up; a sample loops the call enough times to last a few milliseconds. The
  fastest sample is recorded too: on a machine shared with other work it is the
  better estimate of what each library does undisturbed (torch's threads wait
  for each other, so a busy machine slows torch more than single-threaded NumPy);
- torch runs at its default thread count; nothing here touches thread settings;
- normlab runs its default path (`normlab.paths` picks the compiled kernels
  for these sizes) and, as a third column interleaved with the other two, its
  generic core (``normlab.paths.reference_only()``), except on the largest
  rows, where that column would take minutes;
- torch's backward is timed as ``autograd.grad`` on a graph built beforehand
  (``retain_graph=True``), normlab's as ``*_backward`` on a cache built beforehand;
- the bandwidth column divides the fewest bytes the pass must move (forward:
  read x, write y; backward: read x, read dy, write dx; both: the sum, five
  array-sized transfers) by the time, and reports it as a fraction of the speed
  of a 256 MiB copy measured here on all of normlab's threads (the same copy on
  one thread, and one thread's ``np.copyto``, are printed too);
- ``passes`` is how many input-sized arrays normlab's kernels move from
  memory by their design (not a measured count): the minimum when one
  statistic's values (x, and dy in the backward) fit in a thread's share of the
  L2 or L3 cache, more when the kernels must read them again from memory;
  ``pass limit`` is the time those passes take at that copy speed divided by
  the measured time (1.0: the design's passes at copy speed, arithmetic free). Only rows whose arrays are
  larger than the last-level cache get one: smaller ones stay in cache between
  the calls of a sample, so "from memory" does not describe them;
- a new 256 MiB array costs page faults and zeroing when first written; the
  header line prints how much (filling a new array minus filling an existing
  one, on normlab's threads). normlab's kernels recycle outputs of 32 MiB and
  more once nothing refers to them (`normlab.kernels.outputs`), and every loop
  here drops its outputs, so in those rows normlab pays it only on the warm-up
  call. torch pays it on every call: the ``no recycling`` column times normlab
  with recycling off, to show how much of the difference that is.

``--contended`` runs the table a second time with a busy process beside it
(one Python loop per spare core is not what users have; one busy process is).

``--device cuda`` hands over to ``bench.gpu`` (CuPy against torch CUDA) when that
module exists.
"""
import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PASSES = ("forward", "backward", "forward+backward")
# Full-size arrays each pass must at least move (see the module docstring).
ARRAYS_MOVED = {"forward": 2, "backward": 3, "forward+backward": 5}


@dataclass
class Case:
    op: str
    shape: tuple
    nl_forward: Callable  # () -> (y, cache)
    nl_backward: Callable  # (cache) -> grads
    torch_forward: Callable  # () -> y, building the autograd graph
    torch_inputs: list  # tensors autograd.grad differentiates with respect to
    dy_torch: object


def make_cases(rng):
    """The issue's rows, each with module-default affine settings (InstanceNorm has none)."""
    import torch
    import torch.nn.functional as F

    import normlab as nl

    def case(op, shape, channels, nl_fwd, nl_bwd, torch_fwd, affine=True, running=False, param_shape=None,
             bias=True):
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        pshape = param_shape or (channels,)
        w = (1 + 0.1 * rng.standard_normal(pshape)).astype(np.float32) if affine else None
        b = (0.1 * rng.standard_normal(pshape)).astype(np.float32) if affine and bias else None
        rm, rv = (np.zeros(channels, np.float32), np.ones(channels, np.float32)) if running else (None, None)

        xt = torch.from_numpy(x.copy()).requires_grad_()
        wt = None if w is None else torch.from_numpy(w.copy()).requires_grad_()
        bt = None if b is None else torch.from_numpy(b.copy()).requires_grad_()
        rmt, rvt = (None, None) if rm is None else (torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()))
        return Case(
            op, shape,
            nl_forward=lambda: nl_fwd(x, w, b, rm, rv),
            nl_backward=lambda cache: nl_bwd(dy, cache),
            torch_forward=lambda: torch_fwd(xt, wt, bt, rmt, rvt),
            torch_inputs=[t for t in (xt, wt, bt) if t is not None],
            dy_torch=torch.from_numpy(dy.copy()),
        )

    def bn_nl(x, w, b, rm, rv):
        return nl.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, training=True)

    def bn_torch(x, w, b, rm, rv):
        return F.batch_norm(x, rm, rv, w, b, training=True)

    cases = [
        case("BatchNorm2d", (32, 64, 32, 32), 64, bn_nl, nl.batch_norm_backward, bn_torch, running=True),
        case("BatchNorm2d", (8, 256, 14, 14), 256, bn_nl, nl.batch_norm_backward, bn_torch, running=True),
        case("BatchNorm1d", (256, 1024), 1024, bn_nl, nl.batch_norm_backward, bn_torch, running=True),
        case("LayerNorm", (256, 1024), 1024,
             lambda x, w, b, *_: nl.layer_norm_forward(x, (1024,), w, b), nl.layer_norm_backward,
             lambda x, w, b, *_: F.layer_norm(x, (1024,), w, b)),
        case("GroupNorm(32)", (16, 64, 32, 32), 64,
             lambda x, w, b, *_: nl.group_norm_forward(x, 32, w, b), nl.group_norm_backward,
             lambda x, w, b, *_: F.group_norm(x, 32, w, b)),
        case("InstanceNorm2d", (16, 64, 32, 32), 64,
             lambda x, w, b, *_: nl.instance_norm_forward(x, w, b), nl.instance_norm_backward,
             lambda x, w, b, *_: F.instance_norm(x, weight=w, bias=b), affine=False),
        case("RMSNorm", (256, 1024), 1024,
             lambda x, w, *_: nl.rms_norm_forward(x, (1024,), w), nl.rms_norm_backward,
             lambda x, w, *_: F.rms_norm(x, (1024,), w), bias=False),
    ]
    dram = [  # far larger than any cache: these rows measure memory traffic
        case("BatchNorm2d", (64, 256, 56, 56), 256, bn_nl, nl.batch_norm_backward, bn_torch, running=True),
        case("LayerNorm", (8192, 4096), 4096,
             lambda x, w, b, *_: nl.layer_norm_forward(x, (4096,), w, b), nl.layer_norm_backward,
             lambda x, w, b, *_: F.layer_norm(x, (4096,), w, b)),
        case("GroupNorm(32)", (32, 256, 56, 56), 256,
             lambda x, w, b, *_: nl.group_norm_forward(x, 32, w, b), nl.group_norm_backward,
             lambda x, w, b, *_: F.group_norm(x, 32, w, b)),
        case("RMSNorm", (8192, 4096), 4096,
             lambda x, w, *_: nl.rms_norm_forward(x, (4096,), w), nl.rms_norm_backward,
             lambda x, w, *_: F.rms_norm(x, (4096,), w), bias=False),
    ]
    return cases + dram


GENERIC_MAX_ELEMENTS = 1 << 24  # larger rows skip the generic column


def algorithm_passes(cache, cache_bytes):
    """Input-sized arrays the compiled kernels move from memory, per pass (see the module docstring),
    given the cache one thread can keep its unit of work in."""
    from normlab.kernels import numba_norms

    p = getattr(cache, "plan", None)
    if p is None or cache_bytes is None:
        return None
    itemsize = cache.x.dtype.itemsize
    if p.per_channel and p.s == 1:  # BatchNorm1d: each task works on a block of whole rows
        unit = -(-p.n // numba_norms.TASKS) * p.c * itemsize
    else:
        unit = p.count * itemsize
    forward = 2 if unit <= cache_bytes else 3  # else x is read twice: the centred sums, then y
    backward = 3 if 2 * unit <= cache_bytes else 5  # else x and dy are read twice: the sums, then dx
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}


def generic_path(fn):
    """``fn`` on normlab's generic core, every fast path switched off."""
    from normlab import paths

    def run(*args):
        with paths.reference_only():
            return fn(*args)

    return run


def path_name(cache):
    """Which of normlab's paths made this cache."""
    path = getattr(cache, "path", None)
    return "generic" if path is None else path.name


def pass_functions(case, with_generic=True):
    """For each pass, zero-argument callables: normlab (default path), torch, and normlab's generic core
    (or only the first two). Also the default path's name and cache."""
    import torch

    nl_cache = case.nl_forward()[1]
    np_forward, np_backward = generic_path(case.nl_forward), generic_path(case.nl_backward)
    np_cache = np_forward()[1] if with_generic else None
    torch_y = case.torch_forward()

    def torch_backward(y):
        return torch.autograd.grad(y, case.torch_inputs, case.dy_torch, retain_graph=True)

    fns = {
        "forward": (case.nl_forward, case.torch_forward, np_forward),
        "backward": (lambda: case.nl_backward(nl_cache), lambda: torch_backward(torch_y),
                     lambda: np_backward(np_cache)),
        "forward+backward": (
            lambda: case.nl_backward(case.nl_forward()[1]),
            lambda: torch.autograd.grad(case.torch_forward(), case.torch_inputs, case.dy_torch),
            lambda: np_backward(np_forward()[1]),
        ),
    }
    if not with_generic:
        fns = {name: pair[:2] for name, pair in fns.items()}
    return fns, path_name(nl_cache), nl_cache


def _loops_for(fn, min_sample_s):
    """Warm up ``fn`` and return how many calls make one sample of at least ``min_sample_s``."""
    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, math.ceil(min_sample_s / max(once, 1e-9)))


def _sample(fn, loops):
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def sample_interleaved(fns, repeats, min_sample_s=5e-3):
    """``repeats`` samples (seconds per call) of each function, taken in alternating order."""
    loops = [_loops_for(fn, min_sample_s) for fn in fns]
    samples = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(repeats):
        for i in order:
            samples[i].append(_sample(fns[i], loops[i]))
        order.reverse()  # neither side always runs first, e.g. right after the other's cache misses
    return samples


def memcpy_bandwidth(nbytes, repeats=7):
    """Bytes per second of ``np.copyto`` (one thread) between two arrays of ``nbytes`` (read + write counted)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = min(sample_interleaved([lambda: np.copyto(dst, src)], repeats)[0])
    return 2 * src.nbytes / t


def copy_bandwidth(nbytes, repeats=7, threads=None):
    """Bytes per second (read + write counted) of a copy between two arrays of ``nbytes`` on ``threads``
    (default: all of Numba's, the most that normlab's kernels run on: the memory-traffic limit they face)."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def copy(dst, src):
        for i in numba.prange(src.shape[0]):
            dst[i] = src[i]

    numba.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = min(sample_interleaved([lambda: copy(dst, src)], repeats)[0])
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return 2 * src.nbytes / t


def fresh_page_cost(nbytes, repeats=7):
    """Seconds per byte that a newly allocated array costs over an existing one (page faults, zeroing),
    when it is first written by as many threads as normlab's kernels use."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def fill(a):
        for i in numba.prange(a.shape[0]):
            a[i] = 1.0

    existing = np.empty(nbytes // 4, dtype=np.float32)
    new, old = sample_interleaved([lambda: fill(np.empty_like(existing)), lambda: fill(existing)], repeats)
    return max(min(new) - min(old), 0.0) / nbytes


def matmul_flops(n=1024, repeats=7):
    """Floating-point operations per second of a float32 n×n matrix product (BLAS, all cores): the peak
    arithmetic rate that a memory-bound operation never gets near."""
    a = np.ones((n, n), dtype=np.float32)
    t = min(sample_interleaved([lambda: a @ a], repeats)[0])
    return 2 * n**3 / t


def machine_description():
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "architecture")}
                 for p in threadpool_info()]
    except ImportError:
        pools = "threadpoolctl not installed"
    numba = _numba_description()
    return {
        "l2_cache_bytes": _cache_bytes(2),
        "l2_shared_by_cpus": _cache_shared_by(2),
        "l3_cache_bytes": _cache_bytes(3),
        "physical_cores": _physical_cores(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threadpools": pools,
        "numba": numba,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _cache_index(level):
    """cpu0's sysfs folder for its data (or unified) cache of this level (None outside Linux)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == str(level) and (index / "type").read_text().strip() != "Instruction":
                return index
        except OSError:
            return None
    return None


def _cache_bytes(level):
    """The size of cpu0's cache of this level, from Linux's sysfs (None elsewhere)."""
    index = _cache_index(level)
    try:
        size = (index / "size").read_text().strip()
        return int(size[:-1]) * {"K": 2**10, "M": 2**20}[size[-1]] if size[-1] in "KM" else int(size)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _cache_shared_by(level):
    """How many logical CPUs share cpu0's cache of this level (None when unknown)."""
    index = _cache_index(level)
    try:
        cpus = 0
        for part in (index / "shared_cpu_list").read_text().strip().split(","):
            first, _, last = part.partition("-")
            cpus += int(last or first) - int(first) + 1
        return cpus
    except (OSError, ValueError, TypeError):
        return None


def _physical_cores():
    """Distinct (package, core) pairs in /proc/cpuinfo (None when it says nothing)."""
    try:
        pairs, package = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                package = value.strip()
            elif key.strip() == "core id":
                pairs.add((package, value.strip()))
        return len(pairs) or None
    except OSError:
        return None


def _numba_description():
    """Numba's version, threading layer and threads, after one compiled call has started its pool."""
    import normlab as nl
    from normlab.paths import numba_cpu

    if not numba_cpu.PATH.usable():
        return None
    import numba

    x = np.ones((numba_cpu.MIN_ELEMENTS // 64, 64), np.float32)
    nl.layer_norm_forward(x, 64)
    return {"version": numba.__version__, "threading_layer": numba.threading_layer(),
            "threads": numba.config.NUMBA_NUM_THREADS}


def run(repeats, only=None, contended=False):
    rng = np.random.default_rng(0)
    machine = machine_description()
    copy_bw = copy_bandwidth(256 * 2**20)
    copy_bw_small = copy_bandwidth(8 * 2**20)  # the size of the small rows' inputs: it fits in the L3 cache
    one_thread_bw = memcpy_bandwidth(256 * 2**20)
    one_thread_copy_bw = copy_bandwidth(256 * 2**20, threads=1)
    fresh_cost = fresh_page_cost(256 * 2**20)
    flops = matmul_flops()
    # Measured again after the others: a copy that another process disturbed once must not set the limit.
    copy_bw = max(copy_bw, copy_bandwidth(256 * 2**20))
    cases = [c for c in make_cases(rng) if not only or only.lower() in c.op.lower()]
    result = {
        "machine": machine,
        "dtype": "float32",
        "repeats": repeats,
        "copy_bytes_per_s": copy_bw,
        "copy_array_bytes": 256 * 2**20,
        "copy_8MiB_bytes_per_s": copy_bw_small,
        "memcpy_one_thread_bytes_per_s": one_thread_bw,
        "copy_one_thread_bytes_per_s": one_thread_copy_bw,
        "fresh_output_s_per_byte": fresh_cost,
        "matmul_flops_per_s": flops,
        "rows": table(cases, repeats, copy_bw, machine),
    }
    if contended:
        with busy_process():
            result["contended_rows"] = table(cases, repeats, copy_bw, machine)
    result["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


class busy_process:
    """A second process that keeps one core busy (a Python loop) while the block runs."""

    def __enter__(self):
        import subprocess

        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let it get scheduled
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def without_recycling(fn):
    """``fn`` with every output a new array (``normlab.kernels.outputs`` switched off during the call)."""
    from normlab.kernels import outputs

    def run():
        saved, outputs.enabled = outputs.enabled, False
        try:
            return fn()
        finally:
            outputs.enabled = saved
    return run


def thread_cache_bytes(machine):
    """The cache one kernel thread can keep its unit of work in: its share of the L2, or of the L3 when
    that is larger (a unit that leaves the L2 is read again from the L3, not from memory)."""
    l2, l3 = machine.get("l2_cache_bytes"), machine.get("l3_cache_bytes")
    threads = (machine.get("numba") or {}).get("threads") or 1
    shares = [l2 // (machine.get("l2_shared_by_cpus") or 1)] if l2 else []
    shares += [l3 // threads] if l3 else []
    return max(shares, default=None)


def table(cases, repeats, copy_bw, machine):
    from normlab.kernels import outputs

    rows = []
    l3 = machine.get("l3_cache_bytes")
    for case in cases:
        with_generic = math.prod(case.shape) <= GENERIC_MAX_ELEMENTS
        array_bytes = math.prod(case.shape) * 4
        recycled = outputs.enabled and array_bytes >= outputs.MIN_BYTES
        fns, path, cache = pass_functions(case, with_generic)
        passes = algorithm_passes(cache, thread_cache_bytes(machine))
        from_memory = passes is not None and (l3 is None or array_bytes > l3)
        for name in PASSES:
            extra = [without_recycling(fns[name][0])] if recycled else []
            samples = sample_interleaved(list(fns[name]) + extra, repeats)
            samples_nl, samples_torch = samples[:2]
            t_nl, t_torch = statistics.median(samples_nl), statistics.median(samples_torch)
            t_np = statistics.median(samples[2]) if with_generic else None
            t_fresh = statistics.median(samples[-1]) if recycled else None
            best_nl, best_torch = min(samples_nl), min(samples_torch)
            moved = ARRAYS_MOVED[name] * array_bytes
            rows.append({
                "op": case.op,
                "shape": list(case.shape),
                "array_bytes": array_bytes,
                "pass": name,
                "normlab_path": path,
                "normlab_ms": t_nl * 1e3,
                "torch_ms": t_torch * 1e3,
                "ratio": t_nl / t_torch,
                "normlab_best_ms": best_nl * 1e3,
                "torch_best_ms": best_torch * 1e3,
                "best_ratio": best_nl / best_torch,
                "normlab_bw_fraction": moved / t_nl / copy_bw,
                "torch_bw_fraction": moved / t_torch / copy_bw,
                "min_bytes": moved,
                "passes": passes[name] if from_memory else None,
                "pass_limit_fraction": passes[name] * array_bytes / copy_bw / t_nl if from_memory else None,
                "no_recycling_ms": None if t_fresh is None else t_fresh * 1e3,
                "no_recycling_ratio": None if t_fresh is None else t_fresh / t_torch,
                "generic_ms": None if t_np is None else t_np * 1e3,
                "generic_ratio": None if t_np is None else t_np / t_torch,
            })
    return rows


def format_table(rows):
    lines = [
        "| op | shape | pass | normlab ms | torch ms | normlab/torch | fastest: normlab/torch "
        "| normlab BW/copy | torch BW/copy | passes | pass limit | no recycling/torch | generic/torch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        limit = "" if r["pass_limit_fraction"] is None else f"{r['pass_limit_fraction']:.2f}"
        generic = "" if r["generic_ratio"] is None else f"{r['generic_ratio']:.2f}"
        fresh = "" if r["no_recycling_ratio"] is None else f"{r['no_recycling_ratio']:.2f}"
        lines.append(
            f"| {r['op']} | {tuple(r['shape'])} | {r['pass']} | {r['normlab_ms']:.3f} | {r['torch_ms']:.3f} "
            f"| {r['ratio']:.2f} | {r['best_ratio']:.2f} | {r['normlab_bw_fraction']:.2f} "
            f"| {r['torch_bw_fraction']:.2f} | {r['passes'] or ''} | {limit} | {fresh} | {generic} |"
        )
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=9, help="samples per timing, at least 7 (default 9)")
    parser.add_argument("--only", help="run only the ops whose name contains this text (nothing is saved)")
    parser.add_argument("--no-save", action="store_true", help="print the table without writing JSON")
    parser.add_argument("--contended", action="store_true",
                        help="also run the table with a busy process beside it, and report both")
    args, _ = parser.parse_known_args(argv)

    if args.device == "cuda":
        if importlib.util.find_spec("bench.gpu") is None:
            sys.exit("--device cuda needs bench/gpu.py (the CuPy benchmark), which is not in this checkout")
        from bench import gpu

        return gpu.main(argv)
    if args.repeats < 7:
        parser.error("--repeats must be at least 7")

    result = run(args.repeats, args.only, args.contended)
    m = result["machine"]
    kernels = "no Numba: generic core only" if m["numba"] is None else (
        f"numba {m['numba']['version']} ({m['numba']['threading_layer']}, {m['numba']['threads']} threads)")
    print(f"{m['cpu']}, {m['logical_cores']} cores, numpy {m['numpy']}, torch {m['torch']} "
          f"({m['torch_threads']} threads), {kernels}, {m['date']}")
    print(f"copy of 256 MiB on {m['numba']['threads'] if m['numba'] else 1} threads: "
          f"{result['copy_bytes_per_s'] / 1e9:.1f} GB/s, of 8 MiB: {result['copy_8MiB_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"on one thread: {result['copy_one_thread_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"np.copyto of 256 MiB (one thread): {result['memcpy_one_thread_bytes_per_s'] / 1e9:.1f} GB/s "
          f"(read + write); a new 256 MiB output's pages (recycled outputs avoid them): "
          f"{result['fresh_output_s_per_byte'] * 2**28 * 1e3:.1f} ms; float32 matmul: "
          f"{result['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s; load average {m['load_average_at_start'][0]:.1f} "
          f"at start, {result['load_average_at_end'][0]:.1f} at end\n")
    print(format_table(result["rows"]))
    both = [r for r in result["rows"] if r["pass"] == "forward+backward"]
    print(f"\nworst forward+backward ratio: {max(r['ratio'] for r in both):.2f} (medians), "
          f"{max(r['best_ratio'] for r in both):.2f} (fastest samples)")
    if "contended_rows" in result:
        print("\nWith one busy process beside it:\n")
        print(format_table(result["contended_rows"]))
        for quiet, busy in zip(result["rows"], result["contended_rows"]):
            if quiet["pass"] == "forward+backward":
                print(f"{quiet['op']} {tuple(quiet['shape'])}: contended/quiet normlab "
                      f"{busy['normlab_ms'] / quiet['normlab_ms']:.2f}, torch {busy['torch_ms'] / quiet['torch_ms']:.2f}")

    if not (args.no_save or args.only):
        save_results(result, "cpu")
    return 0


def save_results(result, device):
    """Write ``<device>-<date>.json`` and ``latest-<device>.json`` under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1) + "\n"
    dated = RESULTS / f"{device}-{result['machine']['date'][:10]}.json"
    for path in (dated, RESULTS / f"latest-{device}.json"):
        path.write_text(text)
    print(f"wrote {dated} and latest-{device}.json")


if __name__ == "__main__":
    sys.exit(main())
