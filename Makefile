# spurig — the two set-up commands (make demo, make test) and the developer targets.
# Every target creates .venv and installs the project with the pins of constraints.txt;
# test, test-all and gui first run tools/preflight.sh, which installs Xvfb and the Qt runtime
# libraries (apt-get, with sudo when not root) when missing.  SPURIG_NO_GUI=1 skips that and
# runs the suite without the GUI tests.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
SPURIG_NO_GUI ?= 0
# Small enough for `make bench` to finish in minutes on 2 CPU cores (README: Benchmarks).
BENCH_MATRIX ?= 32
BENCH_GROUPS ?= 4
BENCH_ARGS ?= --quick

ifeq ($(SPURIG_NO_GUI),1)
NOGUI := and not gui
endif

.PHONY: demo test test-all gui bench lint format venv preflight clean screenshots

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11+ is required)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[gui,test,scanner,cluster]"
	touch $(STAMP)

preflight:
	@SPURIG_NO_GUI=$(SPURIG_NO_GUI) tools/preflight.sh

demo: $(STAMP)
	$(BIN)/spurig demo $(DEMO_ARGS)

test: $(STAMP) preflight
	$(BIN)/python -m pytest -m "not slow and not cuda $(NOGUI)" $(PYTEST_ARGS)

test-all: $(STAMP) preflight
	$(BIN)/python -m pytest -m "not cuda $(NOGUI)" $(PYTEST_ARGS)

gui: $(STAMP) preflight
	$(BIN)/spurig gui

# README screenshots of the napari plugin (docs/images/), under Xvfb.
screenshots: $(STAMP) preflight
	xvfb-run -a -s "-screen 0 1700x1050x24" $(BIN)/python tools/screenshots.py

bench: $(STAMP)
	$(BIN)/spurig bench --matrix $(BENCH_MATRIX) --groups $(BENCH_GROUPS) --out benchmarks/bench-latest.md
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks tools
	$(BIN)/ruff check --fix src tests benchmarks tools

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
