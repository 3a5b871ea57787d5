# Two commands do all the set-up from a fresh clone:
#   make demo    create .venv, install requirements.txt, train + export + query a text model
#   make test    the same set-up, then the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: venv demo test bench tensorboard clean

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(INSTALLED)

venv: $(INSTALLED)

# The main job on the embedded default corpus (CPython's reference docs): about two minutes on 2 cores.
demo: $(INSTALLED)
	$(PY) -m pipelines.text --cell lstm --units 256 --seq-len 100 --epochs 8 --output saved_models/text

test: $(INSTALLED)
	$(PY) -m pytest -q

# Benchmarks are not tests: they write bench/results/*.json and print the README's table.
bench: $(INSTALLED)
	$(PY) -m bench.text

tensorboard: $(INSTALLED)
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf runs saved_models/*/ .pytest_cache
