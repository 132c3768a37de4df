"""Written by `python -m normlab.exercises build`: `pytest --nbval-lax NN.ipynb` uses nbval_sanitize.cfg.

The check cells store their expected output with a visible prefix; the sanitize file drops it before nbval
compares. An explicit --nbval-sanitize-with wins.
"""
from pathlib import Path


def pytest_configure(config):
    if getattr(config.option, "nbval_sanitize_with", "") is None:
        config.option.nbval_sanitize_with = str(Path(__file__).with_name("nbval_sanitize.cfg"))
