# Two commands: `make demo` (the main job on an embedded default) and `make test`.
# Each creates .venv/ if missing and installs the pinned environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean wheel-check test-vllm

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

# What users install: build the wheel and sdist, install the wheel (not editable) into a fresh venv,
# and run the smoke test from an empty folder with no repository around it.
WHEEL_VENV := build/wheel-venv
wheel-check: $(STAMP)
	rm -rf dist $(WHEEL_VENV) && mkdir -p build
	$(PY) -m build --sdist --wheel --outdir dist . > build/wheel-build.log 2>&1 || (tail -40 build/wheel-build.log; exit 1)
	$(PYTHON) -m venv $(WHEEL_VENV)
	@echo "installing dist/$$(cd dist && ls *.whl) into a fresh venv (log: build/wheel-install.log)"
	$(WHEEL_VENV)/bin/python -m pip install --quiet -c requirements.txt dist/*.whl > build/wheel-install.log 2>&1 || (tail -40 build/wheel-install.log; exit 1)
	tmp=$$(mktemp -d) && cp .ci/wheel_smoke.py $$tmp/ && cd $$tmp && $(CURDIR)/$(WHEEL_VENV)/bin/python wheel_smoke.py

# vLLM integration (not part of `make test` or CI: it builds a second, multi-GB environment and starts
# real engines). Cases and the HF oracle come from vtr's environment; the engine runs in .venv-vllm.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
# --isolated: only PyPI's torch 2.13.0 (not a local +cpu file), see requirements-vllm.txt
VLLM_PIP_CERT := $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--cert /etc/ssl/certs/ca-certificates.crt,)

$(VLLM_STAMP): requirements-vllm.txt pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	@echo "installing the vLLM environment into $(VLLM_VENV) (several GB the first time; log: $(VLLM_VENV)/pip.log)"
	$(VLLM_PY) -m pip install --isolated $(VLLM_PIP_CERT) --quiet --no-deps -r requirements-vllm.txt > $(VLLM_VENV)/pip.log 2>&1 || (tail -40 $(VLLM_VENV)/pip.log; exit 1)
	$(VLLM_PY) -m pip install --isolated --quiet --no-deps --no-build-isolation -e . >> $(VLLM_VENV)/pip.log 2>&1 || (tail -40 $(VLLM_VENV)/pip.log; exit 1)
	$(VLLM_PY) -c "import vllm, torch, vtr.serving; assert vllm.__version__ == '0.32.0', vllm.__version__"
	touch $(VLLM_STAMP)

test-vllm: $(STAMP) $(VLLM_STAMP)
	$(PY) integration/vllm/make_cases.py build/vllm/cases.pt
	$(VLLM_PY) -m pytest -q -p no:cacheprovider integration/vllm/test_engine.py

bench: $(STAMP)
	$(PY) -m benchmarks.efficiency

clean:
	rm -rf $(VENV) build dist *.egg-info
