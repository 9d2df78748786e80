# Two commands for a new user: `make demo` and `make test`. Python 3.11+ and make are all they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= demo-pbx

.PHONY: demo test lint typecheck pytest clean install uninstall

$(BIN)/retentiond: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("retentiond needs Python 3.11 or newer (set PYTHON=python3.11)" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/retentiond
	$(BIN)/retentiond demo $(DEMO_DIR)

# The house plan (README, Code map): layers and independent store kinds (import-linter, the
# contracts in pyproject.toml), then module sizes, dialect branches and private names.
# import-linter lives in a venv of its own: it brings rich, which structlog loads when present.
LINT_VENV := .venv-lint
$(LINT_VENV)/bin/lint-imports:
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet 'import-linter>=2.1,<3'

lint: $(BIN)/retentiond $(LINT_VENV)/bin/lint-imports
	$(BIN)/ruff check retentiond tests tools benchmarks
	$(BIN)/ruff format --check retentiond tests tools benchmarks
	PYTHONPATH=$(CURDIR) $(LINT_VENV)/bin/lint-imports --no-cache
	$(BIN)/python tools/check_house.py

typecheck: $(BIN)/retentiond
	$(BIN)/mypy

pytest: $(BIN)/retentiond $(LINT_VENV)/bin/lint-imports
	$(BIN)/pytest

test: lint typecheck pytest

# `make test-clock [CLOCK='2027-12-31 23:30:00']`: the suite on a moved clock (README,
# Development). Not part of `make test`: it needs faketime (apt-get install faketime).
# --exclude-monotonic: a moved monotonic clock makes every timed wait in Python hang; the
# preloaded tests/faketime_sleep.c keeps time.sleep() working then (libfaketime 0.9.10 bug).
CLOCK ?= 2028-02-29 10:00:00
.PHONY: test-clock
test-clock: $(BIN)/retentiond $(VENV)/faketime_sleep.so
	LD_PRELOAD=$(abspath $(VENV)/faketime_sleep.so) faketime --exclude-monotonic -f '@$(CLOCK)' $(BIN)/pytest

$(VENV)/faketime_sleep.so: tests/faketime_sleep.c
	$(CC) -shared -fPIC -O2 -Wall -o $@ $< -ldl

clean:
	rm -rf $(VENV) $(LINT_VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache build dist

# -- benchmarks (benchmarks/README.md) -------------------------------------------------------------
# `make bench [BENCH_SCALE=rows]`: each benchmark on identical copies of the same data, a table
# on the terminal and JSON in benchmarks/results/. Needs mariadb-server, percona-toolkit,
# tmpreaper and PostgreSQL. BENCH_SCALE sets the MariaDB rows; the other sizes follow it
# (at the default 2,000,000: 1,000,000 3CX calls, 200,000 messages and 200,000 recordings).
BENCH_SCALE ?= 2000000
BENCH_CALLS = $(shell expr $(BENCH_SCALE) / 2)
BENCH_FILES = $(shell expr $(BENCH_SCALE) / 10)

.PHONY: bench
bench: $(BIN)/retentiond
	$(BIN)/python benchmarks/sql_mariadb.py --rows $(BENCH_SCALE)
	$(BIN)/python benchmarks/pg_3cx.py --calls $(BENCH_CALLS)
	$(BIN)/python benchmarks/files.py --messages $(BENCH_FILES) --recordings $(BENCH_FILES)
	$(BIN)/python benchmarks/idle.py

# `make bench-scale`: a FreePBX cel of 50,000,000 rows against 2,000,000 (about an hour; 30 GB
# free in /tmp; SCALE_SNAPSHOTS=DIR keeps the built tables for reruns within a day)
SCALE_SNAPSHOTS ?=
.PHONY: bench-scale
bench-scale: $(BIN)/retentiond
	$(BIN)/python benchmarks/sql_scale.py $(if $(SCALE_SNAPSHOTS),--snapshots $(SCALE_SNAPSHOTS))

# -- install on a PBX (docs/install.md) ------------------------------------------------------------
# `sudo make install [PBX=freepbx|asterisk|3cx]`: a venv in /opt/retentiond with this source tree
# installed into it (not editable), the systemd units, the system user and /etc/retentiond.
# `make install DESTDIR=/tmp/stage` stages the same files without touching the system (for
# packaging and tests): no user, no chown, no systemctl.
DESTDIR        ?=
PREFIX         ?= /usr/local
VENVDIR        ?= /opt/retentiond
SYSCONFDIR     ?= /etc
UNITDIR        ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR    ?= $(SYSCONFDIR)/sysusers.d
TMPFILESDIR    ?= $(SYSCONFDIR)/tmpfiles.d
DOCDIR         ?= $(PREFIX)/share/doc/retentiond
# The system's Python, never one under /root or /home: the service cannot see those (ProtectHome).
INSTALL_PYTHON ?= /usr/bin/python3
PBX            ?=

DEST      := $(if $(DESTDIR),$(abspath $(DESTDIR)))
UNITS     := retentiond.service retentiond-once.service retentiond-once.timer
PBX_DROPIN = $(if $(filter freepbx asterisk,$(PBX)),asterisk.conf,$(if $(filter 3cx,$(PBX)),3cx.conf))

install:
	@if [ -n "$(PBX)" ] && [ -z "$(PBX_DROPIN)" ]; then echo "PBX must be freepbx, asterisk or 3cx" >&2; exit 2; fi
	@if [ -z "$(DEST)" ] && [ "$$(id -u)" != 0 ]; then echo "make install changes the system: run it as root, or stage it with DESTDIR=/some/folder" >&2; exit 2; fi
	@$(INSTALL_PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "retentiond needs Python 3.11 or newer: set INSTALL_PYTHON")'
	@$(INSTALL_PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "$(INSTALL_PYTHON) cannot create a venv: apt-get install python3-venv" >&2; exit 2; }
	$(INSTALL_PYTHON) -m venv --clear $(DEST)$(VENVDIR)
	$(DEST)$(VENVDIR)/bin/python -m pip install --quiet --disable-pip-version-check --no-compile $(CURDIR)
ifneq ($(DEST),)
	@# A staged venv must work at $(VENVDIR) once copied there: its scripts name the final paths.
	grep -rlI --null -F '$(DEST)$(VENVDIR)' $(DEST)$(VENVDIR)/bin $(DEST)$(VENVDIR)/pyvenv.cfg \
		| xargs -0 -r sed -i 's|$(DEST)$(VENVDIR)|$(VENVDIR)|g'
	$(DEST)$(VENVDIR)/bin/python -m compileall -q -f -j 0 -s '$(DEST)' -p / $(DEST)$(VENVDIR)/lib
else
	$(DEST)$(VENVDIR)/bin/python -m compileall -q -j 0 $(DEST)$(VENVDIR)/lib
endif
	install -d $(DEST)$(PREFIX)/bin
	ln -sfn $(VENVDIR)/bin/retentiond $(DEST)$(PREFIX)/bin/retentiond
	install -d $(DEST)$(UNITDIR)
	for unit in $(UNITS); do install -m 0644 systemd/$$unit $(DEST)$(UNITDIR)/$$unit; done
ifneq ($(PBX_DROPIN),)
	for unit in retentiond.service retentiond-once.service; do \
		install -D -m 0644 systemd/$(PBX_DROPIN) $(DEST)$(UNITDIR)/$$unit.d/pbx.conf; done
endif
	install -D -m 0644 systemd/retentiond.sysusers $(DEST)$(SYSUSERSDIR)/retentiond.conf
	install -D -m 0644 systemd/retentiond.tmpfiles $(DEST)$(TMPFILESDIR)/retentiond.conf
	install -d $(DEST)$(DOCDIR)/examples
	install -m 0644 docs/install.md $(DEST)$(DOCDIR)/install.md
	install -m 0644 config/example.yaml systemd/asterisk.conf systemd/3cx.conf $(DEST)$(DOCDIR)/examples/
ifeq ($(DEST),)
	if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/retentiond.conf; \
	elif ! getent passwd retentiond >/dev/null; then \
		useradd --system --user-group --home-dir /var/lib/retentiond --shell /usr/sbin/nologin retentiond; fi
	if command -v systemd-tmpfiles >/dev/null; then systemd-tmpfiles --create $(TMPFILESDIR)/retentiond.conf; \
	else install -d -m 0750 -o retentiond -g retentiond /var/lib/retentiond; fi
	[ -d $(SYSCONFDIR)/retentiond ] || install -d -m 0750 -o root -g retentiond $(SYSCONFDIR)/retentiond
	[ -d $(SYSCONFDIR)/retentiond/credentials ] || install -d -m 0700 -o root -g root $(SYSCONFDIR)/retentiond/credentials
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
else
	[ -d $(DEST)$(SYSCONFDIR)/retentiond ] || install -d -m 0750 $(DEST)$(SYSCONFDIR)/retentiond
	[ -d $(DEST)$(SYSCONFDIR)/retentiond/credentials ] || install -d -m 0700 $(DEST)$(SYSCONFDIR)/retentiond/credentials
endif
	@echo "installed retentiond $$($(DEST)$(VENVDIR)/bin/python -m retentiond --version | sed 's/.*version //') in $(DEST)$(VENVDIR)"
	@[ -e $(DEST)$(SYSCONFDIR)/retentiond/retentiond.yaml ] || echo "next: retentiond init --preset $(or $(PBX),freepbx) -o $(SYSCONFDIR)/retentiond/retentiond.yaml (docs/install.md)"

# Removes the program and the units; keeps the config, the credentials, the deletion log
# (/var/lib/retentiond) and the user that owns it.
uninstall:
	@if [ -z "$(DEST)" ] && [ "$$(id -u)" != 0 ]; then echo "make uninstall changes the system: run it as root, or set DESTDIR" >&2; exit 2; fi
ifeq ($(DEST),)
	if [ -d /run/systemd/system ]; then systemctl disable --now retentiond.service retentiond-once.timer retentiond-once.service 2>/dev/null || true; fi
endif
	for unit in $(UNITS); do rm -f $(DEST)$(UNITDIR)/$$unit; done
	for unit in retentiond.service retentiond-once.service; do \
		rm -f $(DEST)$(UNITDIR)/$$unit.d/pbx.conf; rmdir $(DEST)$(UNITDIR)/$$unit.d 2>/dev/null || true; done
	rm -f $(DEST)$(SYSUSERSDIR)/retentiond.conf $(DEST)$(TMPFILESDIR)/retentiond.conf
	rm -f $(DEST)$(PREFIX)/bin/retentiond
	rm -rf $(DEST)$(VENVDIR) $(DEST)$(DOCDIR)
ifeq ($(DEST),)
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
endif
	@echo "kept: $(SYSCONFDIR)/retentiond (config, credentials), /var/lib/retentiond (the deletion log), user retentiond"

# -- the Debian package (docs/install.md) ----------------------------------------------------------
# `make deb`: dist/retentiond_<version>_<arch>.deb, built from this tree with dpkg-buildpackage and
# dh-virtualenv in a copy of it (build/deb/), so the tree itself stays clean. Needs Debian 12 with
# debhelper, dh-virtualenv, python3-venv and dpkg-dev, and PyPI (or a pip mirror) for the venv.
# DEB_DIST and DEB_BUILD move the output and the build folder (tests build outside the tree).
DEB_DIST  ?= dist
DEB_BUILD ?= build/deb
DEB_VERSION = $(shell dpkg-parsechangelog -S Version 2>/dev/null)
PY_VERSION  = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: deb
deb:
	@command -v dpkg-buildpackage >/dev/null || { echo "make deb needs dpkg-buildpackage: apt-get install dpkg-dev debhelper dh-virtualenv python3-venv" >&2; exit 2; }
	@[ "$(firstword $(subst -, ,$(DEB_VERSION)))" = "$(PY_VERSION)" ] || { echo "debian/changelog says $(DEB_VERSION), pyproject.toml $(PY_VERSION): add a changelog entry (dch -v $(PY_VERSION))" >&2; exit 2; }
	rm -rf $(DEB_BUILD)
	mkdir -p $(DEB_BUILD)/retentiond $(DEB_DIST)
	tar -c --exclude-vcs --exclude=./.venv --exclude=./.venv-lint --exclude=./build --exclude=./dist \
		--exclude=./demo-pbx --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache \
		--exclude=./.pytest_cache --exclude=./.hypothesis --exclude='*.egg-info' . \
		| tar -x -C $(DEB_BUILD)/retentiond
	cd $(DEB_BUILD)/retentiond && dpkg-buildpackage -us -uc -b
	mv $(DEB_BUILD)/retentiond_$(DEB_VERSION)_*.deb $(DEB_DIST)/
	@ls -l $(DEB_DIST)/retentiond_$(DEB_VERSION)_*.deb

# `make messages`: the marked strings of the report, mail and verifier page merged into their
# German catalogues (retentiond/locale/de/LC_MESSAGES/*.po); then translate what is open.
.PHONY: messages
messages: $(BIN)/retentiond
	$(BIN)/python tools/messages.py
	$(BIN)/python tools/messages.py --check
