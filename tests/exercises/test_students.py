"""What a student's set-up relies on: `python -m normlab`, the Makefile's lab target, the extras that back it."""
import subprocess
import sys
import tomllib

from exercise_helpers import ROOT


def test_python_dash_m_normlab_is_the_normlab_command(tmp_path):
    module = subprocess.run([sys.executable, "-m", "normlab", "grade", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert module.returncode == 0, module.stderr
    assert "usage: normlab grade" in module.stdout and "--jobs" in module.stdout
    wrong = subprocess.run([sys.executable, "-m", "normlab", "grade", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert wrong.returncode != 0  # the cli's own exit code comes through
    bare = subprocess.run([sys.executable, "-m", "normlab"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "usage: normlab" in bare.stderr


def test_lab_target_and_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras["lab"])
    assert any(d.startswith("nbconvert") for d in extras["test"])  # `make install` installs .[test,book]
    makefile = (ROOT / "Makefile").read_text()
    assert "\nlab:" in makefile and "jupyter lab" in makefile and "exercises" in makefile


def test_jupyter_nbconvert_executes_an_exercise(tmp_path):
    """The README's `jupyter nbconvert --execute` works with what `make install` installs."""
    import json

    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           str(ROOT / "exercises" / "01.ipynb"), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    nb = json.loads((tmp_path / "01.ipynb").read_text())
    texts = [o.get("text", "") for c in nb["cells"] for o in c.get("outputs", [])]
    printed = "".join("".join(t) if isinstance(t, list) else t for t in texts)
    assert "layer_stats: 0/" in printed and "expected once" not in printed  # the blank's own, fresh output
