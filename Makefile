# Every target creates .venv first if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORE := $(VENV)/.installed-core

# the package and what it runs with (all `make demo` needs)
$(CORE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch/torchvision first, pinned to the CPU-capable releases the machine provides
	$(BIN)/python -m pip install -q "torch>=2.5,<=2.14.1" "torchvision>=0.20,<=0.29.1"
	$(BIN)/python -m pip install -q -e .
	touch $(CORE)

# the test tools and every optional back end the tests exercise
$(STAMP): $(CORE)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(CORE)
	$(BIN)/python -m ddetr.demo

# the docstrings' Example blocks run too (every module of src/ddetr imports without optional back ends)
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -x -p no:cacheprovider --doctest-modules src/ddetr tests

test-slow: $(STAMP) chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests

# the agent skill bundle (skill/) and docs/spec-reference.md, generated from src/ddetr/spec (make test checks them)
skill: $(STAMP)
	$(BIN)/python -m ddetr.spec.skill .

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# the report tests open report.html in Debian's headless Chromium (tests/browser.py): install it when missing
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
