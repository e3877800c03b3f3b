# Quick start targets. `make run` and `make test` each set up what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PRESET ?= lvvit_s
WEIGHTS ?=
OUT    ?= build

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The runtime install: model, exporter, ONNX Runtime (the CPU wheel: extra `cpu`; GPUs take `gpu` instead, never both).
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[cpu]'
	touch $@

# Tests add pytest, ruff and the authors' PyTorch implementation (the parity oracle).
$(VENV)/.test: pyproject.toml $(VENV)/.base
	$(BIN)/python -m pip install -q -e '.[cpu,test]'
	touch $@

run: $(VENV)/.base
	$(BIN)/python -m exporters.onnx --preset $(PRESET) $(if $(WEIGHTS),--weights $(WEIGHTS)) --output $(OUT)/

test: $(VENV)/.test
	$(BIN)/python -m ruff check lvvit exporters runtimes validation tests gpu
	$(BIN)/python -m pytest

clean:
	rm -rf $(OUT) .pytest_cache
