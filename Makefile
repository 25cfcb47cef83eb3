# Two commands on a fresh machine:  `make run` (install + the embedded default job), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No network at run time: models and data come from pip packages and local caches only.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline \
	HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false

.PHONY: install run test clean

$(VENV)/.installed: pyproject.toml requirements/assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel; a looser spec without torch installed pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements/assets.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(OFFLINE) $(PY) train.py $(ARGS)

# Lint first (seconds; ruff pinned in the dev extra, so a new release's rules cannot fail CI), then two workers,
# one test module each at a time (a module shares one tiny teacher); the 20 slowest tests listed.
TEST_WORKERS ?= 2
test: install
	$(PY) -m ruff check --quiet .
	$(OFFLINE) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun
