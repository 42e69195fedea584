# Two commands do everything on a fresh machine (Python 3.10+):
#   make demo   set up, then toy data -> preprocess -> train -> eval -> infer
#   make test   set up, then the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= 2.13.0
DEMO ?= demo

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Idempotent. torch: keep any torch already in the venv (a CUDA build stays); else the CPU build.
# fast-slic is an sdist that needs cython and numpy present at build time.
setup: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip setuptools wheel cython "numpy==2.4.6"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_CPU)"
	$(BIN)/python -c "import fast_slic" 2>/dev/null || $(BIN)/pip install -q --no-build-isolation "fast-slic==0.4.0"
	$(BIN)/pip install -q --no-build-isolation -e ".[test,export]"
	$(BIN)/spix --version

# The whole data flow on synthetic data: ~3 minutes on 2 CPU cores.
demo: setup
	rm -rf $(DEMO)
	$(BIN)/spix make-toy-data $(DEMO)/ADEChallengeData2016 --train 64 --val 16 --seed 0
	$(BIN)/spix preprocess --data-root $(DEMO)/ADEChallengeData2016 --out $(DEMO)/shards --num-superpixels 300 --images-per-shard 16
	$(BIN)/spix train --shards $(DEMO)/shards --out $(DEMO)/run --workers 2 --epochs 4 --preset tiny --crop 128 --batch-size 4
	$(BIN)/spix eval --shards $(DEMO)/shards --checkpoint $(DEMO)/run --out $(DEMO)/run/eval
	$(BIN)/spix infer $(DEMO)/ADEChallengeData2016/images/validation --checkpoint $(DEMO)/run --out $(DEMO)/infer --labels
	@echo "demo done: open $(DEMO)/infer/index.html and $(DEMO)/run/eval/report.md"

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	for b in preprocess pooling loss train_scaling infer pixel_vs_superpixel; do $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(DEMO) build *.egg-info
