"""The first calls in a fresh process: import normlab, then one BatchNorm forward+backward and one
LayerNorm forward on float32 arrays of 2M values (``python -m bench.cold_start``).

Each sample is a new Python process, so nothing is warm but the operating system's file cache. The
compiled kernels are loaded from Numba's disk cache, which ``make install`` fills
(``python -m normlab.kernels.numba_norms``); ``--cold-cache`` points Numba at an empty cache folder
instead, to show what a user would wait without that step. Prints the median and the spread, and
(without ``--no-save``) writes them to ``bench/results/latest-cold-start.json``.
"""
import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile

from bench.run import RESULTS

CHILD = r"""
import time
start = time.perf_counter()
import numpy as np
import normlab as nl
imported = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 64, 32, 32), dtype=np.float32)   # 2M values
dy = rng.standard_normal(x.shape, dtype=np.float32)
t0 = time.perf_counter()
y, cache = nl.batch_norm_forward(x, np.ones(64, np.float32), np.zeros(64, np.float32))
nl.batch_norm_backward(dy, cache)
nl.layer_norm_forward(x.reshape(2048, 1024), 1024)
done = time.perf_counter()
print(f'{{"import_s": {imported - start}, "first_calls_s": {done - t0}, "path": "{type(cache).__name__}"}}')
"""


def sample(env=None):
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-cache", action="store_true", help="an empty Numba cache: compile in the process")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    import os

    env = None
    if args.cold_cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="normlab-cold-"))
    load_before = os.getloadavg()[0]
    runs = [sample(env) for _ in range(args.runs)]
    result = {"runs": runs, "cold_cache": args.cold_cache, "load_average_at_start": load_before,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    for key in ("import_s", "first_calls_s"):
        values = [r[key] for r in runs]
        result[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        print(f"{key}: median {statistics.median(values):.3f} s, min {min(values):.3f}, max {max(values):.3f} "
              f"({len(values)} fresh processes)")
    print(f"path of the first BatchNorm call: {runs[0]['path']}; load average {load_before:.1f} at the start")
    if not args.no_save:
        name = "latest-cold-start" + ("-no-cache" if args.cold_cache else "") + ".json"
        (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote bench/results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
