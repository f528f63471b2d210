# The two commands of the README: `make run` and `make test`.
# Both work on a fresh machine with Python 3.11: they create .venv, install,
# and check the Debian packages that pip cannot bring.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_DEBS := xmlsec1 chromium openssh-client openssh-server
RUN_DEBS := openssh-client

.PHONY: run test lint check-deploy deps-test deps-run clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found %d.%d)" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

deps-test:
	@sh .ci/debs $(TEST_DEBS)

deps-run:
	@sh .ci/debs $(RUN_DEBS)

run: $(STAMP) deps-run
	PORTAL_DEBUG=1 PORTAL_PUBLIC_SCHEME=http PORTAL_PUBLIC_PORT=8000 \
	$(PY) manage.py run_portal --host 127.0.0.1 --port 8000

test: $(STAMP) deps-test
	PORTAL_DEBUG=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PORTAL_DEBUG=1 $(VENV)/bin/mypy .

check-deploy: $(STAMP)
	PORTAL_DEBUG= SECRET_KEY=check-deploy-$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n') \
	PORTAL_MASTER_KEY=$$($(PY) -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(32)).decode())') \
	$(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV)
