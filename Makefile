# Two commands: `make demo` and `make test`. Each creates or refreshes the local venv and installs what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MONAI Label runs in its own environment: it needs pydicom < 3 and other pins the project does not share.
LABEL_VENV ?= .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STAMP := $(LABEL_VENV)/.installed
PORT ?= 8000

.PHONY: demo test lint format clean-demo label-env label-server

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a CPU build of 2.13.0 where none is installed; a GPU user's own torch is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

$(LABEL_STAMP): apps/monailabel/requirements.txt apps/monailabel/constraints.txt pyproject.toml
	test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install -q --upgrade pip
	$(LABEL_PY) -c "import torch" 2>/dev/null || $(LABEL_PY) -m pip install -q torch==2.13.0
	$(LABEL_PY) -m pip install -q -r apps/monailabel/requirements.txt -c apps/monailabel/constraints.txt
	$(LABEL_PY) -m pip install -q --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
	$(LABEL_PY) -m pip install -q --no-deps -e .
	# a torchvision stub (see apps/monailabel/shim): the PyPI wheel is CUDA-built and MONAI Label only imports it
	cp -r apps/monailabel/shim/torchvision "$$($(LABEL_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $(LABEL_STAMP)

label-env: $(LABEL_STAMP)

label-server: $(LABEL_STAMP)
	@test -n "$(STUDIES)" || { echo "usage: make label-server STUDIES=/path/to/images [PORT=8000]"; exit 2; }
	$(LABEL_PY) apps/monailabel/start.py --studies "$(STUDIES)" --port $(PORT)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP) $(LABEL_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	LABEL_SERVER_PYTHON=$(LABEL_PY) $(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-demo:
	rm -rf work/demo
