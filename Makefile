# The README's commands. `make install` is idempotent: a ready machine takes seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.speechssl-installed
TORCH_PAIR := torch==2.14.1 torchaudio==2.11.0
PYTEST_ARGS ?=

.PHONY: install demo test bench lint espeak clean gpu-check gpu-wheels

install: $(STAMP) espeak

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e '.[dev,onnx]' $(TORCH_PAIR)
	touch $(STAMP)

# espeak-ng's C library synthesizes the embedded corpus (egs/mini_synth).
espeak:
	@bash tools/install_espeak.sh

demo: install
	cd egs/mini_synth/ssl1 && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run.sh

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

bench: install
	$(PY) -m benchmarks --json benchmarks/latest.json --md benchmarks/latest.md

# Style, layout (ruff format, 110 columns) and the import layers: part of `make test`.
lint: install
	$(VENV)/bin/ruff check speechssl tests benchmarks
	$(VENV)/bin/ruff format --check speechssl tests benchmarks
	$(VENV)/bin/lint-imports

# On the device machine (one H100/H200, no network, python3 with torch there; .venv does not travel):
#   run(command="make gpu-check OUT=$OUT", carry=[".whl"], timeout_s=540)
# after `make gpu-wheels` here (GPU_ARGS=--quick: about 3 minutes). Installs the carried wheels (--no-index), runs `pytest -m gpu` and
# benchmarks/gpu.py (benchmarks/gpu-latest.{json,md}) and the loader rows (benchmarks/gpu-loader.{json,md}),
# copied to $OUT; without CUDA it says so, exits 0.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_ARGS ?=
gpu-check:
	@PY="$(GPU_PY)" OUT="$(OUT)" bash tools/gpu_check.sh $(GPU_ARGS)

# Wheels (Python 3.12, x86-64) of what the GPU tests import that the device image lacks: into .whl/
# (ignored through .git/info/exclude; it travels with carry=[".whl"]).
GPU_WHEELS ?= soundfile==0.13.1 cffi==1.17.1 pycparser==2.22
gpu-wheels:
	@mkdir -p .git/info; grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl $(GPU_WHEELS)
	@du -sh .whl

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
