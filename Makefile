# `make preprocess && make train` runs the embedded default; `make test` runs the suite.
# The virtual environment in .venv/ is created on first use and re-installed when pyproject.toml changes.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out
DEVICE ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := true

.PHONY: all install demo-tokenizer preprocess train check test bench bench-train clean

all: preprocess train

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,qlora,tensorboard,ray,s3]"
	touch $(STAMP)

install: $(STAMP)

# The demo tokenizer is committed; this rebuilds it (byte-identical: a test checks it).
demo-tokenizer: $(STAMP)
	$(PY) -m tools.build_demo_tokenizer --corpus data/corpus.txt --out data/tokenizer

preprocess: $(STAMP)
	$(PY) -m pipeline preprocess --config data/preprocess.yaml --out $(OUT)/shards

# A fresh demo run each time (the trainer refuses to overwrite a run; continue one with --resume instead).
train: $(STAMP)
	rm -rf $(OUT)/run
	$(PY) -m pipeline train --config data/train.yaml --data $(OUT)/shards --out $(OUT)/run

check: $(STAMP)
	$(PY) -m pipeline check $(OUT)/shards --report $(OUT)/report.html

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m tools.bench

# This trainer against TRL's SFTTrainer on the same shards, model and hyperparameters (DEVICE=cuda on a GPU).
bench-train: $(STAMP)
	$(PY) -m tools.bench_train --device $(DEVICE) --work $(OUT)/bench-train

clean:
	rm -rf $(OUT)
