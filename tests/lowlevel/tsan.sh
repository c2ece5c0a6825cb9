#!/usr/bin/env bash
# Stress test of the C core under ThreadSanitizer.
#
#   bash tests/lowlevel/tsan.sh [SECONDS] [--show-fence-limit]
#
# SECONDS (default 5) is the length of each clean run (fence mode, then
# membarrier mode).  Then a busted run must show violations and a
# deliberately racy control run must be reported by TSan.
# --show-fence-limit adds an informational run that frees retired objects,
# where TSan reports races it cannot rule out (README.md says why).
set -uo pipefail

SECS=5
SHOW_FENCE_LIMIT=0
for arg in "$@"; do
    case $arg in
    --show-fence-limit) SHOW_FENCE_LIMIT=1 ;;
    -h | --help)
        sed -n '2,10p' "$0"
        exit 0 ;;
    *[!0-9.]* | '')
        echo "usage: tsan.sh [SECONDS] [--show-fence-limit]" >&2
        exit 2 ;;
    *) SECS=$arg ;;
    esac
done

. "$(dirname "$0")/common.sh"

# -Wno-tsan: gcc warns that TSan does not model atomic_thread_fence (the
# core's fences); README.md explains what that means for this run.
FLAGS=(-std=c11 -Wall -Wextra -Werror -Wno-tsan -fsanitize=thread -g -O1 -pthread)
probe_runtime tsan libtsan2 -- "${FLAGS[@]}"

T0=$(now)
BIN="$BUILD/stress-tsan"
build "$BIN" "${FLAGS[@]}"

export TSAN_OPTIONS="halt_on_error=1 exitcode=66 ${TSAN_OPTIONS:-}"
SEED=()
[ -n "${AIORCU_STRESS_SEED:-}" ] && SEED=(--seed "$AIORCU_STRESS_SEED")

# Older TSan runtimes abort on kernels with high mmap randomization
# ("unexpected memory mapping"); run those without ASLR.
RUN=()
if ! "$BIN" --racy-control >"$BUILD/tsan-probe.log" 2>&1 &&
    grep -q 'unexpected memory mapping' "$BUILD/tsan-probe.log"; then
    RUN=(setarch "$(uname -m)" -R)
    echo "lowlevel: TSan needs ASLR off on this kernel; using ${RUN[*]}"
fi

leg tsan-fence pass "${RUN[@]}" "$BIN" --mode fence --seconds "$SECS" "${SEED[@]}"
leg tsan-membarrier pass "${RUN[@]}" "$BIN" --mode membarrier --seconds "$SECS" "${SEED[@]}"
# Negative controls: the poison check still works in this build (objects are
# kept, not freed), and TSan reports a plain unsynchronized counter.
leg tsan-busted caught "${RUN[@]}" "$BIN" --mode fence --busted --seconds 1 "${SEED[@]}"
leg tsan-racy-control tsan-race "${RUN[@]}" "$BIN" --racy-control
if [ $SHOW_FENCE_LIMIT = 1 ]; then
    leg tsan-fence-limit info "${RUN[@]}" "$BIN" --mode fence --retire free --seconds 2 \
        "${SEED[@]}"
fi

echo "lowlevel: total $(elapsed "$T0" "$(now)") s; logs in $BUILD"
if [ $FAILED != 0 ]; then
    echo "lowlevel: FAILED"
    exit 1
fi
echo "lowlevel: all TSan legs passed"
