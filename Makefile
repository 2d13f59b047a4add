# MedMod engine — every target sets itself up first (`make setup` is idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data
PATIENTS ?= 2000
SEED ?= 0
PYTEST_ARGS ?=

# JPEGs at 256 px: the shards store 256 px and the demo trains on 64 px crops, so the generator's
# default 512 px would only cost time here (`SYNTH_ARGS=` restores it).
SYNTH_ARGS ?= --image-size 256

SYNTH := $(DATA)/synth-$(PATIENTS)p-seed$(SEED)
ETL_OUT := $(DATA)/etl-$(PATIENTS)p-seed$(SEED)
ETL_ARGS ?=

.PHONY: setup jars class-archive test test-fast lint format demo synth etl clean shards verify-shards

setup: $(STAMP) jars class-archive

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

jars: $(STAMP)
	@$(PY) -m spark_jobs.jars fetch >/dev/null

# The driver JVM's class archive (spark_jobs/class_archive.py): built once per machine, ~2 min.
# Runs only start faster with it, so a failed build warns instead of stopping the target.
class-archive: jars
	@$(PY) -m spark_jobs.class_archive build >/dev/null || echo "warning: no JVM class archive built; Spark runs load their classes as usual" >&2

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The synthetic dataset is generated once per (size, seed); delete the folder to regenerate.
synth: setup $(SYNTH)/_truth/manifest.json

$(SYNTH)/_truth/manifest.json:
	$(PY) -m spark_jobs.synth_mimic --out $(SYNTH) --patients $(PATIENTS) --seed $(SEED) $(SYNTH_ARGS)

etl: synth
	$(PY) -m spark_jobs.pipeline raw=$(SYNTH) out=$(ETL_OUT) $(ETL_ARGS)

clean:
	rm -rf $(DATA) runs spark-warehouse .pytest_cache

# --- shards: gold Delta tables -> WebDataset shards + DALI index + manifest.json
SHARDS_OUT := $(DATA)/shards-$(PATIENTS)p-seed$(SEED)
SHARDS_ARGS ?=

shards: etl
	$(PY) -m spark_jobs.write_shards tables=$(ETL_OUT) out=$(SHARDS_OUT) $(SHARDS_ARGS)

verify-shards: setup
	$(PY) -m spark_jobs.verify_shards $(SHARDS_OUT) tables=$(ETL_OUT)

# --- trainer: a small run on the synthetic shards, e.g. `make train TRAIN_TASK=decomp NPROC=2`
TRAIN_TASK ?= ihm
TRAIN_MODEL ?= uni_ehr
NPROC ?= 1
TRAIN_ARGS ?=
BENCH_ARGS ?=

.PHONY: train bench-train compare bench-models
# Runs live beside the data they were trained on: a run directory is resumed when it exists, so
# runs of another dataset must not share it.
RUNS ?= $(DATA)/runs-$(PATIENTS)p-seed$(SEED)
TRAIN_CMD = $(PY) -m torch.distributed.run --nproc_per_node=$(NPROC) --standalone trainer/train.py \
	task=$(TRAIN_TASK) model=$(TRAIN_MODEL) data.shards=$(SHARDS_OUT) train.runs_dir=$(RUNS) train=smoke $(TRAIN_ARGS)

train: shards
	$(TRAIN_CMD)

bench-train: setup
	$(PY) scripts/bench_train.py $(BENCH_ARGS)

# --- models: unimodal vs fusion on one task (`make compare COMPARE_MODELS="uni_ehr uni_cxr early late medfuse"`)
# Images at 64 px by default here: ResNet-34 at SPEC's 224 px does ~12x the arithmetic.
COMPARE_MODELS ?= uni_ehr uni_cxr medfuse
COMPARE_ARGS ?= train=smoke data.image_resize=72 data.image_crop=64
COMPARE_CMD = $(PY) scripts/compare_fusion.py --shards $(SHARDS_OUT) --tasks $(TRAIN_TASK) \
	--models $(COMPARE_MODELS) --runs $(RUNS)/compare -- $(COMPARE_ARGS)

compare: shards
	$(COMPARE_CMD)

bench-models: setup
	$(PY) scripts/bench_models.py $(BENCH_ARGS)

# --- the benchmark protocol (trainer/benchmark.py): lr search x seeds, tables in $(RESULTS)/tables
RESULTS ?= $(DATA)/results-$(PATIENTS)p-seed$(SEED)
BENCHMARK_PRESET ?= quick
BENCHMARK_ARGS ?= parallel=2

.PHONY: benchmark
benchmark: shards
	$(PY) -m trainer.benchmark shards=$(SHARDS_OUT) out=$(RESULTS) preset=$(BENCHMARK_PRESET) $(BENCHMARK_ARGS)

# generator -> ETL -> shards (verified) -> unimodal EHR vs CXR vs late fusion on phenotyping, one
# table with 95% CIs. Phenotyping, because it has the most labelled stays of the stay-level tasks
# (2,000 patients: 218 test stays; IHM has 85) and most of its groups follow latents that the EHR
# shows and the images do not (severity, diabetes, neurology); late fusion, because it trains
# nothing (MedFuse would add ~3.5 minutes).
DEMO_TASK ?= pheno
DEMO_MODELS ?= uni_ehr uni_cxr late
DEMO_ARGS ?= train=smoke train.epochs=2 data.image_resize=72 data.image_crop=64
DEMO_CMD = $(PY) scripts/compare_fusion.py --shards $(SHARDS_OUT) --tasks $(DEMO_TASK) \
	--models $(DEMO_MODELS) --runs $(RUNS)/demo -- $(DEMO_ARGS)

# The demo writes the shards of its task only (the others would add ~2 minutes); `make shards`,
# `make benchmark` and the training targets write every task again.
demo: etl
	$(PY) -m spark_jobs.write_shards tables=$(ETL_OUT) out=$(SHARDS_OUT) task=$(DEMO_TASK) $(SHARDS_ARGS)
	$(PY) -m spark_jobs.verify_shards $(SHARDS_OUT) tables=$(ETL_OUT)
	$(DEMO_CMD)
	@echo
	@echo "demo done: synthetic MIMIC-IV + MIMIC-CXR-JPG in $(SYNTH) (ground truth in $(SYNTH)/_truth)"
	@echo "           Delta tables (bronze/silver/gold, _quality) in $(ETL_OUT)"
	@echo "           WebDataset shards + manifest.json in $(SHARDS_OUT) ($(DEMO_TASK) only)"
	@echo "           runs in $(RUNS)/demo/$(DEMO_TASK)/<model>/0, the table above in $(RUNS)/demo/table.md"
	@echo "           next: make benchmark (the quick protocol: every task and model, SSL rows, the paper's tables)"
