# Two commands: `make demo` (the main job on an embedded default) and `make test`.
# Each creates .venv/ if missing and installs the pinned environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned environment into $(VENV) (a few minutes the first time; log: $(VENV)/pip.log)"
	$(PY) -m pip install --quiet -r requirements.txt > $(VENV)/pip.log 2>&1 || (tail -40 $(VENV)/pip.log; exit 1)
	$(PY) -m pip install --quiet --no-deps -e . >> $(VENV)/pip.log 2>&1 || (tail -40 $(VENV)/pip.log; exit 1)
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
