# Two commands on a fresh machine: `make demo` (the main job on the bundled sample) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format gpu-wheels smoke

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of PyTorch first (GPU machines: install a CUDA build of torch instead)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/liveportrait demo --frames 8 -o liveportrait-demo.mp4

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# the wheels that the GPU check carries to a GPU machine without network (docs/benchmarks.md, "GPU check")
gpu-wheels: $(STAMP)
	$(PY) -m bench.gpu_check wheels

# The deployment on a real Docker engine: images, the compose stack, a job through nginx, a worker and a
# gateway killed (deploy/smoke.sh, docs/deploy.md). Not part of `make test` or CI.
smoke:
	bash deploy/smoke.sh
