# Shared by run.sh and tsan.sh: paths, sanitizer runtime check, one "leg"
# (a run of the stress binary with an expected outcome).  Sourced, not run.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CSRC=${AIORCU_CSRC:-$ROOT/csrc}    # another core to test, e.g. a patched copy
BUILD=${AIORCU_LOWLEVEL_BUILD:-$HERE/build}
CC=${CC:-gcc}
FAILED=0
mkdir -p "$BUILD"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# probe_runtime NAME PACKAGES... -- FLAGS...: compile and run an empty
# program with FLAGS; if that fails, install PACKAGES with apt-get (as root)
# and try again.
probe_runtime() {
    local name=$1
    shift
    local pkgs=()
    while [ "$1" != "--" ]; do
        pkgs+=("$1")
        shift
    done
    shift
    local probe="$BUILD/probe-$name"
    printf 'int main(void) { return 0; }\n' >"$probe.c"
    if "$CC" "$@" "$probe.c" -o "$probe" 2>"$probe.log" && "$probe" 2>>"$probe.log"; then
        return 0
    fi
    echo "lowlevel: $name runtime missing; installing ${pkgs[*]}"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1; }
    fi
    if "$CC" "$@" "$probe.c" -o "$probe" 2>"$probe.log" && "$probe" 2>>"$probe.log"; then
        return 0
    fi
    echo "lowlevel: cannot build or run a program with $* ($CC):"
    cat "$probe.log"
    echo "lowlevel: install ${pkgs[*]} (Debian/Ubuntu) or the sanitizer runtimes of your compiler"
    exit 1
}

# core_sources: every csrc/*.c except the CPython extension (hotpath.c, the
# files that include Python.h); the same set csrc/build_cffi.py compiles.
core_sources() {
    local f
    for f in "$CSRC"/*.c; do
        grep -q '^#include <Python.h>' "$f" || printf '%s\n' "$f"
    done
}

# build OUTPUT FLAGS...: the C core plus the harness.
build() {
    local out=$1
    shift
    local t0 srcs
    t0=$(now)
    mapfile -t srcs < <(core_sources)
    if ! "$CC" "$@" -I"$CSRC" "${srcs[@]}" "$HERE/stress.c" -o "$out" 2>"$out.build.log"; then
        echo "lowlevel: build failed: $CC $* (log: $out.build.log)"
        cat "$out.build.log"
        exit 1
    fi
    echo "lowlevel: built $(basename "$out") in $(elapsed "$t0" "$(now)") s"
}

# leg NAME EXPECT CMD...: runs CMD, logs to $BUILD/NAME.log and checks:
#   pass      exit 0 and "stress: PASS" (exit 77: membarrier unavailable, skipped)
#   caught    exit 3 and "negative control caught" (violations seen)
#   asan-uaf  non-zero exit with an AddressSanitizer heap-use-after-free report
#   tsan-race exit 66 with a ThreadSanitizer data race report
#   info      anything; the outcome is only shown
leg() {
    local name=$1 expect=$2
    shift 2
    local log="$BUILD/$name.log" t0 rc ok=0 verdict
    t0=$(now)
    "$@" >"$log" 2>&1
    rc=$?
    case $expect in
    pass)
        if [ $rc = 77 ]; then
            verdict="SKIP ($(grep -m1 -o 'unavailable: .*' "$log"))"
            ok=1
        elif [ $rc = 0 ] && grep -q '^stress: PASS' "$log"; then
            verdict=ok
            ok=1
        fi ;;
    caught)
        [ $rc = 3 ] && grep -q 'negative control caught' "$log" && { verdict="ok (violations caught)"; ok=1; } ;;
    asan-uaf)
        [ $rc != 0 ] && grep -q 'AddressSanitizer: heap-use-after-free' "$log" &&
            { verdict="ok (ASan: heap-use-after-free)"; ok=1; } ;;
    tsan-race)
        [ $rc = 66 ] && grep -q 'ThreadSanitizer: data race' "$log" &&
            { verdict="ok (TSan: data race)"; ok=1; } ;;
    info)
        verdict="exit $rc$(grep -m1 -o 'ThreadSanitizer: [a-z -]*' "$log" | sed 's/^/, /')"
        ok=1 ;;
    esac
    local figures
    figures=$(grep -m1 '^stress: reads=' "$log" | sed 's/^stress: //')
    printf 'lowlevel: %-22s %-34s %5s s  %s\n' "$name" "${verdict:-FAILED (exit $rc)}" \
        "$(elapsed "$t0" "$(now)")" "$figures"
    if [ $ok = 0 ]; then
        FAILED=1
        # The head of the first sanitizer report, else the end of the log.
        local first
        first=$(grep -n -m1 -E '^==[0-9]+==ERROR|^WARNING: ThreadSanitizer|runtime error|VIOLATION|INVARIANT|HANG|self-test failed' "$log" | cut -d: -f1)
        if [ -n "$first" ]; then
            echo "lowlevel: --- $log, from line $first ---"
            sed -n "1,3p;$((first > 3 ? first : 4)),$((first + 45))p" "$log"
        else
            echo "lowlevel: --- last lines of $log ---"
            tail -n 45 "$log"
        fi
        echo "lowlevel: ---"
    fi
}
