# The README's commands. `make install` is idempotent: a ready machine takes seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.speechssl-installed
TORCH_PAIR := torch==2.14.1 torchaudio==2.11.0
PYTEST_ARGS ?=

.PHONY: install demo test bench lint espeak clean

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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
