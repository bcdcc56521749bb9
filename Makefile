# lifecycled — every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo demo-cluster sim bench bench-compare bench-profile chaos mutants wheel-check clean fmt dist deb deb-check tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check lifecycled tests bench
	$(BIN)/ruff format --check lifecycled tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format lifecycled tests bench
	$(BIN)/ruff check --fix lifecycled tests bench

# Benchmark peers (persist-queue, huey) and the profiler live only in bench/.venv.
BENCH_VENV  := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . persist-queue huey py-spy
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

# Each figure's change between two results (bench/results/*.json); fails on any > 10 % worse.
bench-compare:
	$(PYTHON) bench/compare.py $(A) $(B)

# py-spy on the daemon during HTTP submissions and the full lifecycle (bench/results/profile-*).
bench-profile: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.profile

# Mutation testing (docs/TESTING.md): mutmut over the engine's safety modules ([tool.mutmut] in
# pyproject.toml) against the engine tests. Its own venv; never part of `make test`.
# `make mutants MUTANTS='lifecycled.domain.outcome*'` restricts the run to one module.
MUT_VENV    := .venv-mutmut
MUT_STAMP   := $(MUT_VENV)/.installed
MUTANTS     ?=
MUTMUT_ARGS ?= --max-children 2

$(MUT_STAMP): pyproject.toml
	test -x $(MUT_VENV)/bin/python || $(PYTHON) -m venv $(MUT_VENV)
	$(MUT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MUT_VENV)/bin/python -m pip install --quiet -e '.[dev]' 'mutmut>=3.8,<4'
	touch $(MUT_STAMP)

mutants: $(MUT_STAMP)
	$(MUT_VENV)/bin/mutmut run $(MUTMUT_ARGS) $(if $(MUTANTS),"$(MUTANTS)")
	$(MUT_VENV)/bin/mutmut results

chaos: $(STAMP)
	$(BIN)/python tests/e2e/chaos.py $(CHAOS_ARGS)

demo: $(STAMP)
	$(BIN)/lifecycled demo

demo-cluster: $(STAMP)
	$(BIN)/lifecycled demo-cluster

sim: $(STAMP)
	$(BIN)/lifecycled sim --guests 20

# promtool, which the tests use to check the alert rules and the dashboard's queries: taken
# out of Debian's prometheus package into .tools/ (no service installed). Without it that
# test is skipped.
PROMTOOL := .tools/prometheus/usr/bin/promtool
tools: $(PROMTOOL)
$(PROMTOOL):
	mkdir -p .tools
	cd .tools && (apt-get download prometheus >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null))
	dpkg-deb -x .tools/prometheus_*.deb .tools/prometheus
	rm -f .tools/prometheus_*.deb
	$(PROMTOOL) --version | head -1

# The wheel and sdist (dist/), built in an isolated environment by `build`.
dist: $(STAMP)
	rm -f dist/lifecycled-*.whl dist/lifecycled-*.tar.gz
	$(BIN)/python -m build --outdir dist . >/dev/null
	@ls dist/lifecycled-*

# A Debian package (Debian 12 / PVE 8, Debian 13 / PVE 9) carrying its own venv under
# /opt/lifecycled, built with the release's own /usr/bin/python3; the tools come from
# Debian's archive when missing (run as root).
DEB_TOOLS := /usr/bin/dpkg-deb /usr/share/doc/python3-venv
$(DEB_TOOLS):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv dpkg-dev adduser >/dev/null

deb: dist $(DEB_TOOLS)
	rm -f dist/lifecycled_*.deb
	packaging/deb/build.sh dist/lifecycled-*.whl dist

# Build, install, run, purge: what CI runs to prove the package works (needs root).
deb-check: deb
	packaging/deb/check.sh dist/lifecycled_*.deb

clean:
	rm -rf .tools $(VENV) $(BENCH_VENV) $(MUT_VENV) mutants bench/.work build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
