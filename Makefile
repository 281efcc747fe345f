# revtransfer: `make demo` runs the main job, `make test` the test suite. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
WHEELS := .cache/wheels
D2_WHEEL := $(WHEELS)/sal_detectron2-0.7.2-py3-none-any.whl
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo clean-venv

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile change.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	@# detectron2 ships only as sal-detectron2's cp310 wheel (pure python for what we use):
	@# fetch it for 3.10, rename it to a py3 wheel and install it without its pinned deps.
	@if [ ! -f $(D2_WHEEL) ]; then \
	  mkdir -p $(WHEELS)/d2tmp && \
	  $(BIN)/python -m pip download -q --no-deps --python-version 3.10 --only-binary=:all: \
	    sal-detectron2==0.7.2 -d $(WHEELS)/d2tmp && \
	  mv $(WHEELS)/d2tmp/sal_detectron2-0.7.2-*.whl $(D2_WHEEL) && rm -rf $(WHEELS)/d2tmp; \
	fi
	$(BIN)/python -m pip install -q --no-deps $(D2_WHEEL)
	$(BIN)/python -m pip install -q -e ".[study,detection,dev]"
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/revtransfer demo

clean-venv:
	rm -rf $(VENV)

# Engine and model tests against torch 2.4 (the floor in pyproject.toml) and 2.11 (the GPU machine's),
# each in a cached venv outside the repo (${REVTRANSFER_CACHE:-~/.cache/revtransfer}); see .ci/torch_matrix.sh.
# `make test-torch-matrix TORCH_MATRIX=2.4` runs one version.
.PHONY: test-torch-matrix
TORCH_MATRIX ?=
test-torch-matrix:
	PYTHON=$(PYTHON) .ci/torch_matrix.sh $(TORCH_MATRIX)
