# make demo      - create .venv, install, train the demo recipe (tiny Qwen2.5-VL, SAPO, CPU)
# make test      - create .venv, install, run the whole test suite (and test-min)
# make test-min  - the model, rollout and log-prob tests at the lowest supported transformers
# make relock    - re-resolve requirements/lock*.txt to the newest releases; writes them if the tests pass
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
MIN_VENV := .venv-min
MIN_LOCK := requirements/lock-min.txt
MIN_STAMP := $(MIN_VENV)/.installed-$(shell cat setup.cfg pyproject.toml $(MIN_LOCK) | cksum | cut -d' ' -f1)
MIN_TESTS := tests/test_families.py tests/test_logprobs.py tests/test_logprobs_chunked.py \
	tests/test_shared_prefill.py tests/test_rollout_sampling.py tests/test_generation_precision.py
DEMO_ASSETS := runs/demo-assets
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo demo-assets test test-min test-fast system-deps relock clean

install: $(STAMP)

$(STAMP):
	@$(PY) -m venv --help >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3-venv)
	$(PY) -m venv $(VENV)
	# torch first, pinned: this takes the CPU build where one is provided locally instead
	# of the registry's newest build with gigabytes of CUDA packages. Then exactly the
	# versions CI tested (the lock), then rlvr itself without resolving anything again.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

$(MIN_STAMP):
	$(PY) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install -q torch==2.13.0
	$(MIN_VENV)/bin/pip install -q -r $(MIN_LOCK)
	$(MIN_VENV)/bin/pip install -q --no-deps -e .
	rm -f $(MIN_VENV)/.installed-*; touch $@

demo-assets: $(STAMP)
	$(BIN)/python -m rlvr.devtools.make_tiny_model --family qwen2_5_vl --out $(DEMO_ASSETS)/model
	$(BIN)/python -m rlvr.devtools.make_demo_data --out $(DEMO_ASSETS)/data

demo: demo-assets
	$(BIN)/python launch/train.py --config recipes/demo.yaml output_dir=$(DEMO_RUN)

# What the multi-process and SLURM tests need besides Python packages, from Debian when
# missing (root only; otherwise those tests are skipped or fail with a message saying why):
# a C++ compiler and ninja (DeepSpeed builds its CPU communication op on first use), and
# SLURM with munge (tests/test_slurm.py runs a two-node cluster on localhost).
# The versions CI tested are in requirements/debian.txt; a version the archive no longer
# has (Debian replaces point releases) falls back to the archive's own, and says so.
SYSTEM_BINS := c++ ninja slurmctld slurmd sbatch munged chromium chromedriver
system-deps:
	@missing=$$(for b in $(SYSTEM_BINS); do command -v $$b >/dev/null || echo $$b; done); \
	pins=$$(grep -v '^#' requirements/debian.txt); names=$$(echo "$$pins" | sed 's/=.*//'); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing" $$pins "(missing: $$missing)"; \
	    apt-get update -qq && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pins >/dev/null 2>&1 || \
	      { echo "the tested versions are gone from the archive; installing its own:" $$names; \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$names >/dev/null; }; }; \
	  else echo "missing $$missing: install" $$names "as root for the distributed, SLURM and browser tests"; fi; \
	fi

test: $(STAMP) system-deps
	sh tests/browser/install.sh
	$(BIN)/python -m pytest -q
	$(MAKE) test-min

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -c "import transformers; print('test-min: transformers', transformers.__version__)"
	$(MIN_VENV)/bin/python -m pytest -q $(MIN_TESTS)

relock:
	$(PY) requirements/relock.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(MIN_VENV) .venv-relock .venv-relock-min build *.egg-info
