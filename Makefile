# Two commands for a fresh machine (only Python >= 3.11 and the package index needed):
#   make run    pretrain on the built-in corpus, evaluate, sample
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/default

.PHONY: run test clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/installed
	$(PY) -m jaxlm.train --config=configs/default.py --workdir=$(RUN_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(RUN_DIR)
	$(PY) -m jaxlm.sample --workdir=$(RUN_DIR) --prompt="def " --max_new_tokens=120 --num_samples=2

test: $(VENV)/installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .jax_cache runs
