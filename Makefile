# The two commands of the README:
#   make run    serve on the embedded default with the demo inventory (127.0.0.1:50051) and the web
#               console on http://127.0.0.1:8080/
#   make test   install everything (Python deps, stubs, real Elasticsearch and MinIO) and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/flowlog/v1/*.proto)

.PHONY: run test install stubs services bench lint clean web

$(STAMP): requirements.lock pyproject.toml setup.py server/native/_fastingest.c $(PROTOS) scripts/gen_protos.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) scripts/gen_protos.py
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# The web console's charting library, from npm at the versions (and integrity hashes) of
# clients/web/package-lock.json; the server serves it from clients/web/node_modules.
WEB_STAMP := clients/web/node_modules/.installed
$(WEB_STAMP): clients/web/package.json clients/web/package-lock.json
	cd clients/web && npm ci --no-audit --no-fund --ignore-scripts
	@touch $(WEB_STAMP)

web: $(WEB_STAMP)

stubs: install
	$(PY) scripts/gen_protos.py

run: install web
	$(VENV)/bin/flowlog-server --http-listen 127.0.0.1:8080 $(ARGS)

services: install web
	$(PY) scripts/services fetch all

test: install lint web services
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (lint + format check) and mypy (strict on server/core, lenient elsewhere), configured in
# pyproject.toml, at the versions pinned in requirements.lock.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install services
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) flowlog build *.egg-info data clients/web/node_modules
