#!/usr/bin/env bash
# Runs the core of the test suite under every other supported CPython found
# on this machine (3.10, 3.12, 3.13; `make pytest` covers the default one):
# the read path, async sections, cancellation of commits (asyncio's own
# Task.cancel, wait_for, timeout and TaskGroup differ between versions),
# fork, cells, bitmaps and callbacks.  Each version gets its own virtual
# environment under .venv-compat/, reused while the package's sources are
# unchanged.  A version that is not installed is reported and
# skipped; set AIORCU_COMPAT_STRICT=1 to make that an error.
#
#   bash tests/compat/run.sh [VERSION ...]      (default: 3.10 3.12 3.13)
set -euo pipefail
cd "$(dirname "$0")/../.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.12 3.13)
TESTS=(tests/test_reader.py tests/test_async.py tests/test_cancellation.py tests/test_domain.py
    tests/test_fork.py tests/test_starvation.py tests/test_cell.py tests/test_bitmap.py
    tests/test_memory.py tests/test_polling.py tests/test_callbacks.py)
sources=$(cat setup.py pyproject.toml csrc/*.c csrc/*.h csrc/*.py aiorcu/*.py aiorcu/*.pyi |
    sha256sum | cut -c1-16)
failed=0

find_python() {
    local v=$1 candidate
    for candidate in "$(command -v "python$v" 2>/dev/null || true)" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python3; do
        if [ -x "$candidate" ] && "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

for v in "${versions[@]}"; do
    if ! python=$(find_python "$v"); then
        echo "compat: Python $v is not installed here; skipped"
        [ "${AIORCU_COMPAT_STRICT:-0}" = 1 ] && failed=1
        continue
    fi
    venv=.venv-compat/$v
    if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$sources" ]; then
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install -q -U pip >/dev/null
        "$venv/bin/python" -m pip install -q . pytest pytest-asyncio trio hypothesis >"$venv.log" 2>&1 ||
            { tail -20 "$venv.log"; echo "compat: installing under Python $v failed" >&2; exit 1; }
        echo "$sources" >"$venv/.stamp"
    fi
    # Run from a copy of the tests, outside the source tree, so that the
    # installed package (not ./aiorcu, built for another Python) is imported.
    work=$(mktemp -d)
    cp -r tests pyproject.toml "$work/"
    if (cd "$work" && AIORCU_STRESS_SECONDS=2 "$OLDPWD/$venv/bin/python" -m pytest -q -p no:cacheprovider \
        "${TESTS[@]}" 2>&1 | tail -3); then
        echo "compat: Python $v ok ($("$venv/bin/python" -V 2>&1))"
    else
        echo "compat: Python $v FAILED" >&2
        failed=1
    fi
    rm -rf "$work"
done
exit $failed
