# Two entry points for a fresh machine: `make book` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNELS := $(VENV)/.kernels-compiled

.PHONY: install lab book browser test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: this build lies on the machine's disk; a loose request pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,book]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Compile the Numba kernels into their disk cache now (again whenever they change), so that no user's
# first call waits for the compiler.
$(KERNELS): $(STAMP) src/normlab/kernels/numba_norms.py
	$(BIN)/python -m normlab.kernels.numba_norms
	touch $(KERNELS)

install: $(KERNELS)

# The exercises in JupyterLab (the `lab` extra): http://localhost:8888/lab; Ctrl-C stops it.
# LAB_ARGS passes options through, e.g. `make lab LAB_ARGS=--no-browser`. Jupyter refuses root unless told:
# as root (a container) it gets --allow-root.
lab: install
	$(BIN)/pip install -q -e '.[lab]'
	$(BIN)/jupyter lab --notebook-dir=exercises $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

book: install
	rm -rf _build
	$(BIN)/jupyter-book build . -W -n --keep-going

# The book's browser test drives Debian's headless chromium through chromedriver.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && apt-get install -y chromium chromium-driver)

test: book browser
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.run --contended
	$(BIN)/python -m bench.cold_start
	$(BIN)/python -m bench.bridge

clean:
	rm -rf _build $(VENV)
