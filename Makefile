# Quick start targets. `make run` and `make test` each set up what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PRESET ?= lvvit_s
WEIGHTS ?=
OUT    ?= build

.PHONY: run test lint clean locate-samples

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
	$(BIN)/python -m ruff check lvvit exporters runtimes validation serving tests gpu
	$(BIN)/python -m pytest

# The sample `validation locate` reports of docs/samples: lvvit_s fp32, fp16, int8 and int8 with accuracy control
# on real photographs.
SAMPLES := $(OUT)/locate-samples
locate-samples: $(VENV)/.test
	$(BIN)/python -m validation photos $(SAMPLES)/photos --variants 2
	$(BIN)/python -m exporters.onnx --preset lvvit_s --output $(SAMPLES)/
	$(BIN)/python -m exporters.onnx --preset lvvit_s --precision fp16 --output $(SAMPLES)/
	# random weights: int8 agrees with Paddle on ~92% of the photos, under the 99% gate; the sample shows where it parts
	$(BIN)/python -m exporters.onnx --preset lvvit_s --quantize int8 --images $(SAMPLES)/photos --output $(SAMPLES)/ \
	  --min-int8-agreement 0
	# int8 with accuracy control: the stages it keeps in float show no int8 error in its sample
	$(BIN)/python -m exporters.onnx --preset lvvit_s --quantize int8 --images $(SAMPLES)/photos --output $(SAMPLES)/ \
	  --accuracy-control
	for p in "" _fp16 _int8 _int8_ac; do \
	  $(BIN)/python -m validation locate --preset lvvit_s --onnx $(SAMPLES)/lvvit_s$$p.onnx --images $(SAMPLES)/photos \
	    --limit 16 --runtime ort $$([ "$$p" = _fp16 ] || echo --runtime openvino) --report-dir docs/samples \
	    --work-dir $(SAMPLES) --name locate_lvvit_s$${p:-_fp32} --no-progress || [ $$? -eq 1 ]; \
	done

clean:
	rm -rf $(OUT) .pytest_cache
