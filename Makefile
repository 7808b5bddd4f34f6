# make demo  - create .venv, install, train the demo recipe (tiny Qwen2.5-VL, SAPO, CPU)
# make test  - create .venv, install, run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
DEMO_ASSETS := runs/demo-assets
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo demo-assets test test-fast system-deps clean

install: $(STAMP)

$(STAMP):
	@$(PY) -m venv --help >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3-venv)
	$(PY) -m venv $(VENV)
	# torch first, pinned: this takes the CPU build where one is provided locally instead
	# of the registry's newest build with gigabytes of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

demo-assets: $(STAMP)
	$(BIN)/python -m rlvr.tools.make_tiny_model --family qwen2_5_vl --out $(DEMO_ASSETS)/model
	$(BIN)/python -m rlvr.tools.make_demo_data --out $(DEMO_ASSETS)/data

demo: demo-assets
	$(BIN)/python launch/train.py --config recipes/demo.yaml output_dir=$(DEMO_RUN)

# What the multi-process and SLURM tests need besides Python packages, from Debian when
# missing (root only; otherwise those tests are skipped or fail with a message saying why):
# a C++ compiler and ninja (DeepSpeed builds its CPU communication op on first use), and
# SLURM with munge (tests/test_slurm.py runs a two-node cluster on localhost).
SYSTEM_BINS := c++ ninja slurmctld slurmd sbatch munged
SYSTEM_PKGS := g++ ninja-build slurmctld slurmd slurm-client munge
system-deps:
	@missing=$$(for b in $(SYSTEM_BINS); do command -v $$b >/dev/null || echo $$b; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(SYSTEM_PKGS) (missing: $$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PKGS) >/dev/null; \
	  else echo "missing $$missing: install $(SYSTEM_PKGS) as root for the distributed and SLURM tests"; fi; \
	fi

test: $(STAMP) system-deps
	sh tests/browser/install.sh
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
