# Two commands do everything on a fresh machine (Python 3.10+):
#   make demo   set up, then toy data -> preprocess -> train -> eval -> infer
#   make test   set up, then the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= 2.13.0
DEMO ?= demo

.PHONY: setup demo test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Idempotent and quiet: the install runs again only when pyproject.toml changed (stamp file).
# torch: keep any torch already in the venv (a CUDA build stays); else the CPU build.
# fast-slic is an sdist that needs cython and numpy present at build time.
STAMP := $(VENV)/.spix-installed
LOG := $(VENV)/setup.log
PIP := $(BIN)/pip install --disable-pip-version-check
QUIET := >>$(LOG) 2>&1
OR_SHOW_LOG := || { tail -40 $(LOG); exit 1; }
setup: $(STAMP)
	@(command -v chromium && command -v chromedriver) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || echo "note: chromium + chromium-driver could not be installed; the gallery's browser tests will be skipped"
	@$(BIN)/spix --version

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "setting up $(VENV) (the first time takes a few minutes; log: $(LOG))"
	@$(QUIET) $(PIP) --upgrade pip setuptools wheel cython "numpy==2.4.6" $(OR_SHOW_LOG)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(QUIET) $(PIP) "torch==$(TORCH_CPU)" $(OR_SHOW_LOG)
	@$(BIN)/python -c "import fast_slic" 2>/dev/null || $(QUIET) $(PIP) --no-build-isolation "fast-slic==0.4.0" $(OR_SHOW_LOG)
	@$(QUIET) $(PIP) --no-build-isolation -e ".[test,export]" $(OR_SHOW_LOG)
	@touch $(STAMP)

# The whole data flow on synthetic data, with the default training recipe: a few minutes on 2 CPU cores.
# The run goes to runs/demo, where `spix eval` and `spix infer` look by default.
demo: setup
	rm -rf $(DEMO) runs/demo
	$(BIN)/spix make-toy-data $(DEMO)/ADEChallengeData2016 --train 64 --val 16 --seed 0
	$(BIN)/spix preprocess --data-root $(DEMO)/ADEChallengeData2016 --out $(DEMO)/shards --num-superpixels 300 --images-per-shard 16
	$(BIN)/spix train --shards $(DEMO)/shards --out runs/demo
	$(BIN)/spix eval --shards $(DEMO)/shards
	$(BIN)/spix infer $(DEMO)/ADEChallengeData2016/images/validation --out $(DEMO)/infer --labels
	@echo
	@echo "demo done: open $(DEMO)/infer/index.html and runs/demo/eval/report.md; next, with .venv/bin on PATH:"
	@echo "  spix infer YOUR_PHOTOS/            # uses runs/demo, writes YOUR_PHOTOS_spix/"
	@echo "  spix eval --shards $(DEMO)/shards   # scores runs/demo again"

test: setup
	$(BIN)/python -m pytest -q tests

# Everything but the tests marked slow (training, Ray clusters, browsers): under 2 minutes on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: setup
	for b in preprocess pooling loss train_throughput train_scaling infer pixel_vs_superpixel; do $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(DEMO) runs/demo build *.egg-info
