"""`make bench` prints its table: the harness runs end to end on one op (no timings are asserted)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_harness_prints_one_row_per_pass_with_every_column():
    done = subprocess.run([sys.executable, "-m", "bench.run", "--only", "InstanceNorm", "--no-save", "--repeats", "7"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| op |"))
    for column in ("normlab ms", "torch ms", "normlab/torch", "normlab BW/copy", "passes", "pass limit",
                   "no recycling/torch", "generic/torch"):
        assert f"| {column} |" in header
    rows = [line for line in lines if line.startswith("| InstanceNorm2d |")]
    assert [row.split("|")[3].strip() for row in rows] == ["forward", "backward", "forward+backward"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == header.count("|") - 1
        assert float(cells[3]) > 0 and float(cells[4]) > 0  # the two times
        numbers = cells[5:]
        # passes, pass limit and no recycling are blank for rows that fit in the last-level cache
        assert all(float(cell) >= 0 for cell in numbers if cell)
        assert sum(bool(cell) for cell in numbers) >= len(numbers) - 3  # ratios, bandwidths, passes (2 decimals: may print 0.00)
