# `make demo` and `make test` work on a fresh machine: they create .venv and
# install everything from the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py)
STRESS_SECONDS ?= 10

.PHONY: install demo demo-shared test lint typecheck pytest package-check compat torture csan tsan model docs docs-check bench soak clean

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip setuptools wheel cffi
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the page-visibility service under load for a few seconds.
demo: install
	$(BIN)/python examples/page_visibility/service.py --demo

# Worker processes (uvicorn --workers 4) serving pages from one guarded shared
# memory while a controller revokes and grants them; prints the invariant's
# verdict and exits nonzero if it failed (examples/shared_pages/README.md).
demo-shared: install
	$(BIN)/python examples/shared_pages/demo.py --seconds 15

# Every check, in the order a failure is cheapest to see.
test: install lint typecheck pytest package-check compat torture csan model docs-check

# C: clang-format and clang-tidy (the test extra pins their major version;
# configs in .clang-format and .clang-tidy, tests/lowlevel/.clang-tidy for the
# harness). clang-tidy runs one file per core; hotpath.c needs Python's headers.
# The whole target took 1 min 51 s of CPU and 7 min 10 s
# of wall time on this shared 2-core machine under a load average of 5-15.
lint: install
	$(BIN)/ruff check aiorcu tests examples csrc
	$(BIN)/ruff format --check aiorcu tests examples csrc
	$(BIN)/clang-format --dry-run --Werror csrc/*.c csrc/*.h tests/lowlevel/*.c
	include=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') && \
	ls csrc/*.c tests/lowlevel/*.c | xargs -P "$$(nproc)" -I{} $(BIN)/clang-tidy --quiet {} -- \
		-std=gnu11 -D_GNU_SOURCE -Icsrc -I"$$include"

typecheck: install
	$(BIN)/mypy

pytest: install
	AIORCU_STRESS_SECONDS=$(STRESS_SECONDS) $(BIN)/pytest -q
	AIORCU_MEMBARRIER=off AIORCU_STRESS_SECONDS=2 $(BIN)/pytest -q -m "stress or fallback" tests

# The sdist and the wheel, each installed into a bare venv (no extras): the
# import, `aiorcu --version`, `aiorcu info`, a short asyncio script, and the
# public API's type completeness (pyright --verifytypes, at least 95%).
package-check: install
	PYRIGHT=$(abspath $(BIN))/pyright bash tests/packaging/check.sh $(PYTHON)

# The core tests under the other CPython versions installed here (3.10,
# 3.12, 3.13), each in its own venv under .venv-compat/.
compat:
	bash tests/compat/run.sh

# The two runs across processes (--processes) take about 20 s together here.
torture: install
	$(BIN)/aiorcu torture --seconds 10 --jitter
	AIORCU_MEMBARRIER=off $(BIN)/aiorcu torture --seconds 5 --jitter
	$(BIN)/aiorcu torture --seconds 5 --busted --expect-failure
	$(BIN)/aiorcu torture --processes 3 --kill --seconds 15
	$(BIN)/aiorcu torture --processes 2 --seconds 10 --busted --expect-failure

# The C core alone under AddressSanitizer + UndefinedBehaviorSanitizer: a
# threaded stress run in both barrier modes, plus negative controls.
csan:
	bash tests/lowlevel/run.sh

# The same under ThreadSanitizer (not in `make test`: TSan cannot see
# membarrier or fences; tests/lowlevel/README.md says what it checks).
tsan:
	bash tests/lowlevel/tsan.sh

# The Promela model of the grace-period algorithm, checked with spin
# (installed with apt-get when missing): safe as written, and each broken
# variant yields the expected counterexample.
model:
	bash csrc/model/check.sh

docs: install
	$(BIN)/mkdocs build --strict

docs-check: docs
	bash docs/check.sh

bench: install
	$(BIN)/aiorcu bench

soak: install
	$(BIN)/aiorcu torture --seconds 600 --report-rss

clean:
	rm -rf build site tests/lowlevel/build csrc/build csrc/*.o aiorcu/*.so aiorcu/_aiorcu_cffi.c \
		.venv-compat
