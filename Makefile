# Two commands do all the set-up from a fresh clone:
#   make demo    create .venv, install requirements.txt, train + export a text and a stock model,
#                serve both with the embedded server and query them over gRPC
#   make test    the same set-up, then the linter and the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: venv demo serve lint test bench load tensorboard c-example clean

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(INSTALLED)

venv: $(INSTALLED)

# The main jobs on embedded data (no download), about three minutes on 2 cores:
# a character-level LSTM on CPython's reference docs, and an LSTM on MSFT daily prices 2000-2013.
demo: $(INSTALLED)
	$(PY) -m pipelines.text --cell lstm --units 256 --seq-len 100 --epochs 8 --output saved_models/text
	$(PY) -m pipelines.series --cell lstm --units 64 --window 30 --horizon 1 --quantiles 0.1,0.5,0.9 \
		--epochs 20 --output saved_models/stock
	$(PY) -m serving.demo --model_config_file serving/models.config

# The embedded TensorFlow-Serving-compatible server on the usual ports (Ctrl-C stops it).
serve: $(INSTALLED)
	$(PY) -m serving.server --model_config_file serving/models.config --port 8500 --rest_api_port 8501 \
		--tensorflow_intra_op_parallelism 1 --tensorflow_inter_op_parallelism 1 \
		--enable_batching --batching_parameters_file serving/batching.config \
		--monitoring_config_file serving/monitoring.config

# ruff, configured in pyproject.toml; part of make test (and so of CI).
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

# Two pytest workers (pytest-xdist), one test file each at a time, so a module's fixtures (a server,
# a trained model) are built once: the suite is mostly separate processes and waits, so two
# workers on two cores take 8-10 minutes instead of 14. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Benchmarks are not tests: they write bench/results/*.json and print their tables (docs/benchmarks.md).
# TF_CPP_MIN_LOG_LEVEL=3: TensorFlow's C++ notices off (the pipelines and the server have --verbose instead);
# oneDNN on, as the pipelines turn it on (pipelines/cli.py: import_tensorflow).
bench load: export TF_CPP_MIN_LOG_LEVEL ?= 3
bench load: export TF_ENABLE_ONEDNN_OPTS ?= 1
bench: $(INSTALLED)
	$(PY) -m bench.text
	$(PY) -m bench.series
	$(PY) -m bench.serving
	$(PY) -m bench.gradients
	$(PY) -m bench.load

# 16 concurrent clients x 5,000 mixed requests against the embedded server (about 3 minutes).
load: $(INSTALLED)
	$(PY) -m bench.load

# Another app in another language: a C program loads the demo's exports with TensorFlow's C API
# (TF_LoadSessionFromSavedModel, as TensorFlow Serving loads them) and runs them. Needs gcc; run `make demo` first.
TF_DIR = $(shell $(PY) -c "import importlib.util; print(importlib.util.find_spec('tensorflow').submodule_search_locations[0])")
C_EXAMPLE ?= build/run_saved_model

$(C_EXAMPLE): serving/c_api/run_saved_model.c
	@mkdir -p $(dir $@)
	gcc -O2 -Wall -o $@ $< -I$(TF_DIR)/include -L$(TF_DIR) -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 \
		-Wl,-rpath,$(TF_DIR)

c-example: $(INSTALLED) $(C_EXAMPLE)
	SAVED_MODEL_CLI=$(VENV)/bin/saved_model_cli serving/c_api/run_demo.sh $(C_EXAMPLE) saved_models/text saved_models/stock

tensorboard: $(INSTALLED)
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf runs saved_models/*/ .pytest_cache build
