# `make demo` and `make test` set up .venv on first use (torch from the wheel store, the project editable).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.14.1 torchvision==0.29.1
# the pip of these machines warns about every index location it skips; keep the real messages
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
PYTEST_ARGS ?=
# no byte-compiling of every installed file (torch has thousands): about a minute less; what runs compiles on import
PIP_FLAGS ?= --no-compile

.PHONY: demo test lint install clean

# the demo needs only the runtime dependencies; the test tools (and img2dataset with its own) come with `make test`
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_FLAGS) $(TORCH) 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e . 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, torchvision, webdataset, submitit, hydra, wandb, webly"
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e '.[test]' 2>&1 | $(QUIET_PIP)
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
