# `make demo` and `make test` set up .venv on first use (PyTorch and the project, installed with uv).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.14.1 torchvision==0.29.1
# uv fetches and unpacks in parallel: the install takes ~35 s where pip took ~1.5 min (BENCHMARKS.md)
UV := $(BIN)/uv
UV_INSTALL := $(UV) pip install -q --python $(BIN)/python
# the pip of these machines warns about every index location it skips; keep the real messages
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
PYTEST_ARGS ?=
# Nothing is byte-compiled at install (torch alone has thousands of files); instead one import of the modules
# the jobs run (webly.jobs imports them when a job starts) writes the .pyc of all they load, even where
# PYTHONDONTWRITEBYTECODE is set: without it every job process would compile torch and torchvision (~10 s each).
# W&B and pyplot load only when a run logs or plots, so they are named too
WARM_IMPORTS := webly.cli, webly.jobs, pretrain.synthweb.dataset, pretrain.train, transfer.synthbench, \
	transfer.run, transfer.classification, transfer.detection, transfer.segmentation, transfer.dedup, webly.report, \
	wandb, matplotlib.pyplot

.PHONY: demo test lint install clean

# the demo needs only the runtime dependencies; the test tools (and img2dataset with its own) come with `make test`
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/python -m pip install -q uv 2>&1 | $(QUIET_PIP)
	$(UV_INSTALL) $(TORCH) -e .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "import $(WARM_IMPORTS)"
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(UV_INSTALL) $(TORCH) -e '.[test]'
	touch $@

install: $(BIN)/.installed-test

demo: $(BIN)/.installed
	$(BIN)/webly demo

lint: $(BIN)/.installed-test
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs data .pytest_cache
