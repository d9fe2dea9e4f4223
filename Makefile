# stackbox: `make up` runs the cloud, `make test` runs the tests.
# Both install what they need on a fresh Debian 12 host (as root).

VENV        ?= .venv
PYTHON      ?= python3
DATA_DIR    ?= /var/lib/stackbox
APT_PACKAGES = python3 python3-venv python3-dev build-essential iproute2 nftables \
               dnsmasq-base qemu-system-x86 qemu-utils haproxy genisoimage wrk debootstrap \
               postgresql postgresql-client ca-certificates ethtool iputils-ping

.PHONY: up down test deps apt venv test-deps docs novnc

up: deps
	$(VENV)/bin/stackbox up --data-dir $(DATA_DIR)

down:
	$(VENV)/bin/stackbox down --data-dir $(DATA_DIR)

test: deps test-deps
	bash .ci/postgres.sh start
	. ./.ci/postgres.env && STACKBOX_TEST_PG_URL=$$STACKBOX_TEST_PG_URL \
		$(VENV)/bin/python -m pytest -ra $(PYTEST_ARGS) tests

deps: apt venv novnc

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

# noVNC's web client for the console proxy (docs/consoles.md): only the files of
# Debian's novnc package, not its dependencies (websockify, nodejs, numpy are
# for running noVNC's own proxy, which stackbox replaces).
NOVNC_DIR = $(VENV)/share/novnc
novnc: $(NOVNC_DIR)/vnc_lite.html
$(NOVNC_DIR)/vnc_lite.html: $(VENV)/.stamp-venv
	@echo "== noVNC web client from Debian's novnc package (files only) =="
	rm -rf $(VENV)/novnc-deb && mkdir -p $(VENV)/novnc-deb
	cd $(VENV)/novnc-deb && apt-get download -q novnc
	dpkg-deb -x $(VENV)/novnc-deb/novnc_*.deb $(VENV)/novnc-deb/root
	rm -rf $(NOVNC_DIR) && mkdir -p $(VENV)/share
	cp -a $(VENV)/novnc-deb/root/usr/share/novnc $(NOVNC_DIR)
	rm -rf $(NOVNC_DIR)/utils
	cp $(VENV)/novnc-deb/root/usr/share/doc/novnc/copyright $(NOVNC_DIR)/COPYRIGHT.debian
	rm -rf $(VENV)/novnc-deb

test-deps: $(VENV)/.stamp-test
$(VENV)/.stamp-test: requirements-test.lock $(VENV)/.stamp-venv
	$(VENV)/bin/pip install -q -r requirements-test.lock
	touch $@

docs: venv
	$(VENV)/bin/stackbox config docs --output docs/configuration.md
