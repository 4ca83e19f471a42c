# Development of the linked-builds template.
#   make demo       render a project with every default answer into ./demo
#   make test-fast  lint, type-check and run every test that needs no engine (no containers)
#   make test       lint, type-check and run the whole test suite, the engine's tests included
#   make bench      benchmark every strategy on real builds (root; results in docs/)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
WORKERS ?= auto
# In parallel (pytest-xdist), a worker per core (a third worker on 2 cores took 10% off
# and made Docker 26's layer-write race more frequent). The engine tests that share a registry, a
# port or built images carry one xdist_group and run on one worker, in the order
# tests/conftest.py sets (the benchmark first, beside the tests that need no engine). The
# generated projects' makes the tests run see no trace of this one (make[1]:, its flags).
# A test that failed on one of the engines' known intermittent bugs runs once more, and only
# then: Docker 26's containerd store unpacking a new image (moby/buildkit#6521) or racing two
# writes of one layer ("locked for ...: unavailable"), Buildah losing its build container,
# qemu-user hanging a forked child under arm64 emulation (tests/engine.py's make() times out).
ENGINE_FLAKES := --reruns 1 --only-rerun 'failed to prepare extraction snapshot' \
	--only-rerun 'locked for [0-9.]+m?s .*unavailable' --only-rerun 'identifier is not a container' \
	--only-rerun 'timed out after [0-9]+ s'
PYTEST := env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS PATH="$(abspath $(BIN)):$$PATH" \
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup --no-loadscope-reorder $(ENGINE_FLAKES)

.PHONY: demo test test-fast lint bench

$(VENV)/.installed: requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: $(PYTHON) is not Python 3.11 or newer (copier and check-jsonschema need it): make PYTHON=python3.11" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/copier copy --trust --defaults --overwrite --vcs-ref=HEAD $(CURDIR) demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	# base/*.py as a generated project lints them: ruff's defaults, its line length.
	$(BIN)/ruff check --isolated --line-length 120 template/base
	$(BIN)/ruff format --isolated --check --line-length 120 template/base
	$(BIN)/mypy

test-fast: lint
	$(PYTEST) -m "not engine" $(PYTEST_ARGS)

test: lint
	$(PYTEST) $(PYTEST_ARGS)

$(VENV)/.bench: $(VENV)/.installed bench/requirements-bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements-bench.txt
	touch $@

bench: $(VENV)/.bench
	scripts/engine-up
	$(BIN)/python bench/run.py $(BENCH_ARGS)
