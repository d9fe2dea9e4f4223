# stackbox: `make up` runs the cloud, `make test` runs the tests.
# Both install what they need on a fresh Debian 12 host (as root).

VENV        ?= .venv
PYTHON      ?= python3
DATA_DIR    ?= /var/lib/stackbox
APT_PACKAGES = python3 python3-venv python3-dev build-essential iproute2 nftables \
               dnsmasq-base qemu-system-x86 qemu-utils haproxy genisoimage wrk debootstrap \
               postgresql postgresql-client ca-certificates

.PHONY: up down test deps apt venv test-deps docs

up: deps
	$(VENV)/bin/stackbox up --data-dir $(DATA_DIR)

down:
	$(VENV)/bin/stackbox down --data-dir $(DATA_DIR)

test: deps test-deps
	bash .ci/postgres.sh start
	. ./.ci/postgres.env && STACKBOX_TEST_PG_URL=$$STACKBOX_TEST_PG_URL \
		$(VENV)/bin/python -m pytest -ra $(PYTEST_ARGS) tests

deps: apt venv

apt: .stamp-apt
.stamp-apt: Makefile
	@echo "== installing Debian packages (apt-get) =="
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	touch $@

venv: $(VENV)/.stamp-venv
$(VENV)/.stamp-venv: requirements.lock pyproject.toml
	@echo "== creating $(VENV) with pinned Python dependencies =="
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

test-deps: $(VENV)/.stamp-test
$(VENV)/.stamp-test: requirements-test.lock $(VENV)/.stamp-venv
	$(VENV)/bin/pip install -q -r requirements-test.lock
	touch $@

docs: venv
	$(VENV)/bin/stackbox config docs --output docs/configuration.md
