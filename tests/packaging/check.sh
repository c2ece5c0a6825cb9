#!/usr/bin/env bash
# Builds the sdist and the wheel, installs each into a bare virtual
# environment (no extras, nothing else), and runs what a new user runs
# first: the import, `aiorcu --version`, `aiorcu info` and a short asyncio
# script.  A runtime import that is not a declared dependency fails here.
# With PYRIGHT set (a pyright executable), it also scores the installed
# wheel's public types with `pyright --verifytypes` and requires 95%.
#
#   [PYRIGHT=.venv/bin/pyright] bash tests/packaging/check.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${1:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/aiorcu-package.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/builder"
"$work/builder/bin/python" -m pip install -q build
"$work/builder/bin/python" -m build -q --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
    tail -30 "$work/build.log"
    exit 1
}

for artifact in "$work"/dist/*.tar.gz "$work"/dist/*.whl; do
    kind=$([ "${artifact%.whl}" != "$artifact" ] && echo wheel || echo sdist)
    venv="$work/bare-$kind"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$artifact" >"$work/install-$kind.log" 2>&1 || {
        tail -30 "$work/install-$kind.log"
        echo "package-check: installing the $kind failed" >&2
        exit 1
    }
    "$venv/bin/python" -m pip check >/dev/null
    "$venv/bin/python" -c "import aiorcu"
    version=$("$venv/bin/aiorcu" --version)
    "$venv/bin/aiorcu" info | grep -q "^version" || {
        echo "package-check: aiorcu info does not print the version" >&2
        exit 1
    }
    (cd "$work" && "$venv/bin/python" "$OLDPWD/tests/packaging/smoke.py")
    echo "package-check: $kind ok ($version, $(basename "$artifact"))"
done

if [ -n "${PYRIGHT:-}" ]; then
    # Third-party packages' own gaps (pydantic's) are not aiorcu's to fix:
    # --ignoreexternal.  Run where pyright finds the installed wheel.
    report=$(cd "$work" && VIRTUAL_ENV="$work/bare-wheel" PATH="$work/bare-wheel/bin:$PATH" \
        "$PYRIGHT" --verifytypes aiorcu --ignoreexternal || true)
    score=$(printf '%s\n' "$report" | sed -n 's/^Type completeness score: \([0-9.]*\)%.*/\1/p')
    if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s >= 95) }'; then
        printf '%s\n' "$report" | tail -40
        echo "package-check: public type completeness ${score:-?}% is below 95%" >&2
        exit 1
    fi
    echo "package-check: pyright --verifytypes: ${score}% of the public API has known types"
fi
