# The two commands a newcomer needs: `make run` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Test services: the Postgres and Redis on this machine.
TEST_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:5432/mlops_console \
	CELERY_BROKER_URL=redis://127.0.0.1:6379/1 \
	CELERY_TASK_ALWAYS_EAGER=1 \
	DEBUG=0 SECRET_KEY=test-only-secret-key SECURE_SSL_REDIRECT=0 \
	ALLOWED_HOSTS=testserver,localhost,127.0.0.1

.PHONY: run test install lint bench clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	DEBUG=1 $(PY) manage.py load_demo_datasets
	DEBUG=1 $(PY) manage.py load_demo_pipeline
	DEBUG=1 $(PY) manage.py load_demo_registry
	DEBUG=1 $(PY) manage.py load_demo_deployment
	DEBUG=1 $(PY) manage.py load_demo_monitoring
	DEBUG=1 $(PY) manage.py load_demo_abtests
	DEBUG=1 $(PY) manage.py run_console

test: install
	bash scripts/ensure_test_services.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# Fails when a model change has no migration. The database it names exists only while pytest runs (as
	@# test_…), so its warning that the migration history could not be checked against it is silenced.
	$(TEST_ENV) $(PY) -W "ignore:Got an error checking a consistent migration history" \
		manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(PY) manage.py collectstatic --noinput -v0
	@# Two processes (pytest-xdist, a file per process at a time). The end-to-end tests run after the others, in
	@# a second run: their session-scoped Celery worker turns eager tasks off until the session ends.
	$(TEST_ENV) $(VENV)/bin/pytest -n 2 --dist loadfile -m "not e2e"
	$(TEST_ENV) $(VENV)/bin/pytest -n 2 --dist loadfile -m e2e

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	bash scripts/ensure_test_services.sh
	@# wrk drives the model server benchmark with less CPU than a Python generator (it falls back without it).
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || true
	$(TEST_ENV) $(VENV)/bin/pytest tests/bench -s -p no:cacheprovider

clean:
	rm -rf var .pytest_cache
