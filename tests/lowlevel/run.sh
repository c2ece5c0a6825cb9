#!/usr/bin/env bash
# Stress test of the C core under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   bash tests/lowlevel/run.sh [SECONDS] [--tsan]
#
# SECONDS (default 5) is the length of each clean run; there is one in
# membarrier mode and one in fence mode, then the negative controls.
# --tsan runs tsan.sh instead.  AIORCU_STRESS_SEED fixes the seed;
# AIORCU_CSRC points at another copy of csrc/.  See README.md.
set -uo pipefail

SECS=5
REST=()
for arg in "$@"; do
    [ "$arg" = --tsan ] && TSAN=1 || REST+=("$arg")
done
[ -n "${TSAN:-}" ] && exec bash "$(dirname "$0")/tsan.sh" "${REST[@]}"
for arg in "$@"; do
    case $arg in
    -h | --help)
        sed -n '2,9p' "$0"
        exit 0 ;;
    *[!0-9.]* | '')
        echo "usage: run.sh [SECONDS] [--tsan]" >&2
        exit 2 ;;
    *) SECS=$arg ;;
    esac
done

. "$(dirname "$0")/common.sh"

FLAGS=(-std=c11 -Wall -Wextra -Werror
    -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1 -fno-sanitize-recover=all
    -pthread)
probe_runtime asan+ubsan libasan8 libubsan1 -- "${FLAGS[@]}"

T0=$(now)
BIN="$BUILD/stress-asan"
build "$BIN" "${FLAGS[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
SEED=()
[ -n "${AIORCU_STRESS_SEED:-}" ] && SEED=(--seed "$AIORCU_STRESS_SEED")
SHORT=$(awk -v s="$SECS" 'BEGIN { print (s < 2 ? s : 2) }')

leg asan-membarrier pass "$BIN" --mode membarrier --seconds "$SECS" "${SEED[@]}"
leg asan-fence pass "$BIN" --mode fence --seconds "$SECS" "${SEED[@]}"
# Negative controls: grace periods that wait for nobody must be caught, by
# the poison check (objects kept) and by ASan itself (objects freed).
if grep -q '^stress: SKIP' "$BUILD/asan-membarrier.log"; then
    BUSTED_MODE=fence
else
    BUSTED_MODE=membarrier
    leg busted-membarrier caught "$BIN" --mode membarrier --busted --seconds "$SHORT" "${SEED[@]}"
fi
leg busted-fence caught "$BIN" --mode fence --busted --seconds "$SHORT" "${SEED[@]}"
leg busted-free asan-uaf "$BIN" --mode "$BUSTED_MODE" --busted --retire free \
    --seconds "$SHORT" "${SEED[@]}"

echo "lowlevel: total $(elapsed "$T0" "$(now)") s; logs in $BUILD"
if [ $FAILED != 0 ]; then
    echo "lowlevel: FAILED"
    exit 1
fi
echo "lowlevel: all ASan+UBSan legs passed"
