# make demo  - create .venv, install, train the demo recipe (tiny Qwen2.5-VL, SAPO, CPU)
# make test  - create .venv, install, run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
DEMO_ASSETS := runs/demo-assets
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo demo-assets test test-fast clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
