# emt: set-up, reproduction, tests and docs. `make repro` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: install repro test check-nbs docs browser clean-venv

# A virtual environment with torch 2.13.0 first (so nothing pulls another torch), then emt with its dev tools.
install: $(VENV)/.emt-installed
$(VENV)/.emt-installed: pyproject.toml constraints.txt requirements-interop.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps -r requirements-interop.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The main job: pull the embedded corpus from the in-repository DVC remote and run the pipeline.
repro: install
	source $(BIN)/activate && dvc repro --pull

# The notebooks are the source: the package and README must match them.
check-nbs: install
	source $(BIN)/activate && nbdev-clean && nbdev-export && emt readme
	@if [ -n "$$(git status --porcelain -- nbs emt README.md)" ]; then \
	  git status --porcelain -- nbs emt README.md; \
	  echo "nbs/, emt/ or README.md changed under nbdev-clean, nbdev-export or emt readme: run them and commit."; exit 1; fi

# The docs site's browser test (tests/test_browser.py) drives Debian's Chromium; it is installed from apt when missing
# (as root), never downloaded by playwright. EMT_REQUIRE_BROWSER=1 makes that test fail, not skip, without it.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; fi

test: install check-nbs browser
	source $(BIN)/activate && HF_HUB_OFFLINE=1 EMT_PROGRESS=0 nbdev-test --n-workers 2
	source $(BIN)/activate && HF_HUB_OFFLINE=1 EMT_PROGRESS=0 EMT_REQUIRE_BROWSER=1 EMT_REQUIRE_INTEROP=1 python -m pytest -q

docs: install
	source $(BIN)/activate && emt docs
