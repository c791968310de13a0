# `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run lint test test-only bench soak clean prometheus compare scaling fleet-demo

venv: $(STAMP)

# The venv with the project (editable) and its test tools, then the -OO bytecode that
# `reconciler run` starts again under (optimised_command in reconciler/imports.py).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -OO -m compileall -q -j0 reconciler "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" > /dev/null
	touch $(STAMP)

# .venv/bin on PATH: the example specs name the shipped collectors by bare name.
run: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/reconciler run --specs specs --state-dir .state --metrics-address 127.0.0.1:9184 --socket .state/api.sock

lint: venv
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# promtool and prometheus (Debian package) for the rule tests and the live scrape test.
prometheus:
	metrics/install-prometheus.sh

test-only: venv prometheus
	$(BIN)/pytest

test: lint test-only

bench: venv
	$(BIN)/python bench/manager_bench.py
	$(BIN)/python bench/loop_bench.py

# The chaos soak, long: 30 minutes of random faults (make test runs 90 s of it).
soak: venv
	$(BIN)/python bench/soak.py --seconds 1800

# Side by side with supervisord and circus (their own venv, .bench/peers-venv): every row, ~15 min.
compare: venv
	$(BIN)/python bench/compare_bench.py

# The reconciler alone at 100 to 2,000 collectors (bench/compare/SCALING.md), its import costs,
# and what one more collector costs in memory.
scaling: venv
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/import_cost.py
	$(BIN)/python bench/collector_memory.py

# Three reconcilers and one Prometheus on this machine: a spec rollout that one
# host does not apply is named by the rollout rules and dashboard query, alerted, then resolved (~15 s).
fleet-demo: venv prometheus
	$(BIN)/python bench/fleet_demo.py

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
