# Two commands: `make demo` (the main job on an embedded default) and `make test`.
# Each creates .venv/ if missing and installs the pinned environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet -r requirements.txt 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet --no-deps -e . 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, torchvision, transformers, vtr; assert torch.__version__.startswith('2.14.1'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m vtr.demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.efficiency

clean:
	rm -rf $(VENV) build *.egg-info
