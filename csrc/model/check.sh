#!/usr/bin/env bash
# Model-checks csrc/model/grace.pml with spin, one run per variant, and
# compares each outcome with the expected one (see README.md beside this
# file).  Variants run MODEL_JOBS at a time (default 2); the table prints
# in list order once all have finished.  Exits non-zero if any expectation
# is not met.  Build artefacts live in a temporary directory that is removed
# on exit.  MODEL_KEEP=1 keeps it, MODEL_VERBOSE=1 prints the story of every
# counterexample, MODEL_DEEP=1 adds runs with three grace periods and with
# three read sections, MODEL_ONLY=<regex> runs only the variants whose name
# matches.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model="$here/grace.pml"
cc=${CC:-cc}
jobs=${MODEL_JOBS:-2}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "check.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

if ! command -v spin >/dev/null 2>&1; then
    echo "check.sh: spin not found; installing the Debian package" >&2
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q spin >/dev/null; then
        as_root apt-get update -q >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q spin >/dev/null
    fi
fi
command -v spin >/dev/null || { echo "check.sh: spin is not available" >&2; exit 2; }
command -v "$cc" >/dev/null || { echo "check.sh: no C compiler ($cc)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/aiorcu-model.XXXXXX")
if [ "${MODEL_KEEP:-0}" = 1 ]; then
    echo "check.sh: artefacts kept in $work"
else
    trap 'rm -rf "$work"' EXIT
fi

# Failing assertions, as pan prints them.
SAFETY='l2\[|\(6\+l1\['   # "a section that read an older version is still inside", or use after free
UNDERFLOW='mem\[ca\]>0'     # a decrement found its count at 0
HANG='invalid end state'    # a process stuck for good (a writer waiting forever)
# name | -D flags | expect: verify, hang (an invalid end state), or
# fail:<regex the violated assertion must match>
variants=(
    "faithful|                                     |verify"
    "busted|-DBUSTED                               |fail:$SAFETY"
    "busted-closed|-DBUSTED_CLOSED                 |fail:$SAFETY"
    "no-flip-fences|-DNO_FLIP_FENCES               |verify"
    "no-m1|-DNO_M1                                 |fail:$SAFETY"
    "no-m3|-DNO_M3                                 |fail:$SAFETY"
    "timeout|-DTIMEOUT                             |verify"
    "timeout-unflip|-DTIMEOUT -DUNFLIP_ON_TIMEOUT  |verify"
    "fence-mode|-DFENCE_MODE                       |verify"
    "fence-no-f1|-DFENCE_MODE -DNO_F1              |fail:$SAFETY"
    "fence-no-f2|-DFENCE_MODE -DNO_F2              |fail:$SAFETY"
    "fence-no-m1|-DFENCE_MODE -DNO_M1              |fail:$SAFETY"
    "tso|-DTSO                                     |verify"
    "tso-no-m3|-DTSO -DNO_M3                       |verify"
    "tso-no-m1|-DTSO -DNO_M1                       |fail:$SAFETY"
    "busted-gen|-DBUSTED_GEN                       |fail:$UNDERFLOW"
    "busted-gen-nowrap|-DBUSTED_GEN -DNO_WRAP_CHECK|fail:$SAFETY"
    "foreign-no-f2|-DFOREIGN_NO_F2                 |verify"
    "fence-foreign-no-f2|-DFENCE_MODE -DFOREIGN_NO_F2|fail:$SAFETY"
    "probe-overlap|-DPROBE_OVERLAP                 |fail:ph\\[0\\]==ph\\[1\\]"
    "probe-straggler|-DPROBE_STRAGGLER             |fail:\\(\\(mem\\["
    "probe-late-load|-DPROBE_LATE                  |fail:pc\\[[01]\\]==5"
    "probe-leftover|-DPROBE_LEFTOVER -DTIMEOUT     |fail:l1\\[0\\]<k"
    "probe-foreign|-DPROBE_FOREIGN                 |fail:pc\\[1\\]>=2"
    "probe-stale|-DPROBE_STALE                     |fail:gen\\[kind\\[0\\]\\]!=sgen"
    # Across processes (csrc/shared.c, csrc/grace.c): a reader's process dies
    # and a writer releases its slot; a writer dies holding the writer mutex.
    "proc-death|-DPROC_DEATH                        |verify"
    "busted-reap|-DPROC_DEATH -DBUSTED_REAP         |fail:$UNDERFLOW"
    "busted-reap-nowrap|-DPROC_DEATH -DBUSTED_REAP -DNO_WRAP_CHECK|fail:$SAFETY"
    "join-race|-DPROC_DEATH -DJOIN_RACE             |fail:$UNDERFLOW"
    "sibling-runs|-DPROC_DEATH -DSIBLING_RUNS       |fail:$UNDERFLOW"
    "probe-reclaim|-DPROC_DEATH -DPROBE_RECLAIM     |fail:reaped_in==gp_started"
    "writer-death|-DWRITER_DEATH                    |verify"
    "busted-recovery|-DWRITER_DEATH -DBUSTED_RECOVERY|fail:$SAFETY"
    "busted-recover-closed|-DWRITER_DEATH -DBUSTED_RECOVER_CLOSED|fail:$SAFETY"
    "busted-recover-nostrag|-DWRITER_DEATH -DBUSTED_RECOVER_NO_STRAGGLER|fail:$SAFETY"
    "probe-recovery|-DWRITER_DEATH -DPROBE_RECOVERY |fail:mem\\[0\\]!=cur"
    "reap-death|-DPROC_DEATH -DREAP_DEATH           |hang"
    "reap-hold|-DPROC_DEATH -DREAP_DEATH -DREAP_HOLD|verify"
)
# Extra pan flags.  busted-gen-nowrap, busted-reap-nowrap: the wrapped
# count also hangs the writer (an invalid end state, which pan would report
# first); -E looks for the safety violation past it.
declare -A pan_flags=([busted-gen-nowrap]=-E [busted-reap-nowrap]=-E)
# Extra compiler flags.  COLLAPSE (lossless state compression) keeps the
# biggest deep run under MEMLIM, at some cost in time.  BFS (breadth-first,
# still exhaustive) finds the shortest counterexample; for these variants
# that takes a fraction of the states a depth-first search stores first.
declare -A cc_flags=([fence-mode-3sec]=-DCOLLAPSE [busted-recovery]=-DBFS
    [busted-recover-closed]=-DBFS [probe-recovery]=-DBFS
    [busted-reap-nowrap]=-DBFS)
# Optimization: -O0 compiles pan.c in about a third of the CPU time -O1
# takes, and -O1 searches about 1.6 times as fast (-O2 compiles slower still
# and searches no faster).  Past about 1.8 M states the faster search pays
# for the slower build: those variants, and the deep ones, get -O1.
big='^(faithful|no-flip-fences|timeout|timeout-unflip|foreign-no-f2|probe-leftover|proc-death'
big+='|writer-death|reap-death|reap-hold|.*-3gp|.*-3sec)$'
# Three grace periods, or three read sections: more interleavings, about
# 280 s more on this machine, two at a time.  Three sections in membarrier
# mode do not fit (see README).
if [ "${MODEL_DEEP:-0}" = 1 ]; then
    variants+=(
        "faithful-3gp|-DNGP=3                      |verify"
        "no-flip-fence-3gp|-DNO_FLIP_FENCES -DNGP=3|verify"
        "timeout-3gp|-DTIMEOUT -DNGP=3             |verify"
        "fence-mode-3gp|-DFENCE_MODE -DNGP=3       |verify"
        "tso-3sec|-DTSO -DNSEC=3                   |verify"
        "tso-no-m1-3sec|-DTSO -DNO_M1 -DNSEC=3     |fail:$SAFETY"
        "fence-mode-3sec|-DFENCE_MODE -DNSEC=3     |verify"
    )
fi
if [ -n "${MODEL_ONLY:-}" ]; then
    kept=()
    for entry in "${variants[@]}"; do
        if [[ "${entry%%|*}" =~ $MODEL_ONLY ]]; then kept+=("$entry"); fi
    done
    variants=("${kept[@]}")
fi

trim() { printf '%s' "$1" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }

# One variant: build, search, judge; writes one table line to $dir/line.
run_variant() {
    local name=$1 defs=$2 expect=$3 panflags=$4 ccflags=$5 dir=$6 opt=-O0
    local note="" result="" states="" depth="" violated="" errors="" ok status
    local build=- search=- cpu=0 u=0 s=0 TIMEFORMAT='%R %U %S'
    if [[ "$name" =~ $big ]]; then opt=-O1; fi
    mkdir -p "$dir"
    cp "$model" "$dir/grace.pml"
    # Wall time of each phase, and the CPU time of both (user + system),
    # which the load of other jobs on the machine changes less.
    { time (
        cd "$dir"
        # shellcheck disable=SC2086 # word splitting of the flags is wanted
        spin -a $defs grace.pml >spin.log 2>&1 &&
            "$cc" "$opt" -w -DSAFETY -DMEMLIM=2048 $ccflags -o pan pan.c >cc.log 2>&1
    ) || true; } 2>"$dir/build.time"
    if [ -x "$dir/pan" ]; then
        # shellcheck disable=SC2086
        { time (cd "$dir" && ./pan -m10000 -w24 $panflags >pan.log 2>&1) || true; } \
            2>"$dir/search.time"
    fi
    read -r build u s <"$dir/build.time" || true
    cpu=$(awk -v a="${u:-0}" -v b="${s:-0}" 'BEGIN { print a + b }')
    if [ -s "$dir/search.time" ]; then
        read -r search u s <"$dir/search.time" || true
        cpu=$(awk -v c="$cpu" -v a="${u:-0}" -v b="${s:-0}" 'BEGIN { printf "%.1f", c + a + b }')
    fi
    local log="$dir/pan.log"
    if [ ! -s "$log" ]; then
        result="broken"
        note="spin or cc failed: $(cat "$dir/spin.log" "$dir/cc.log" 2>/dev/null | head -3 | tr '\n' ' ')"
    else
        states=$(awk '/states, stored/ {print $1; exit}' "$log")
        depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$log" | head -1)
        errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$log" | head -1)
        violated=$(grep -m1 -E 'assertion violated|invalid end state \(' "$log" || true)
        # A search cut short (memory bound, depth limit) prints errors: 0 too.
        local cut='max search depth too small|out of memory|aborting|reached -DMEMLIM bound'
        if grep -qE "$cut" "$log" ||
            { [ "${errors:-1}" = 0 ] && grep -q 'Search not completed' "$log"; }; then
            result="incomplete"
            note="$(grep -m1 -E "$cut|Search not completed" "$log")"
        elif [ "${errors:-1}" = 0 ]; then
            result="verified"
        else
            result="counterexample"
            note="${violated#pan:1: }"
        fi
    fi
    ok=0
    case "$expect" in
        verify) [ "$result" = verified ] && ok=1 ;;
        hang)
            if [ "$result" = counterexample ] && echo "$violated" | grep -q "$HANG"; then ok=1; fi
            ;;
        fail:*)
            if [ "$result" = counterexample ] && echo "$violated" | grep -q 'assertion violated' &&
                echo "$violated" | grep -qE "${expect#fail:}" && ! echo "$violated" | grep -q 'sb_len'; then
                ok=1
            fi
            ;;
    esac
    status="ok"
    [ "$ok" = 1 ] || status="UNEXPECTED"
    printf '%-22s %-6s %-14s %10s %5s %6ss %6ss %6ss  %s %s\n' "$name" "${expect%%:*}" \
        "$result" "${states:--}" "${depth:--}" "$build" "$search" "$cpu" "$status" "$note" \
        >"$dir/line"
    if [ "$result" = counterexample ] && [ "${MODEL_VERBOSE:-0}" = 1 ]; then
        # shellcheck disable=SC2086
        (cd "$dir" && spin -t $defs grace.pml 2>&1 | grep -E 'MSC:|assertion' | sed 's/^ */    /') \
            >>"$dir/line"
    fi
}

total_start=$(date +%s)
names=()
running=0
for entry in "${variants[@]}"; do
    IFS='|' read -r name defs expect <<<"$entry"
    names+=("$name")
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_variant "$name" "$(trim "$defs")" "$(trim "$expect")" "${pan_flags[$name]:-}" \
        "${cc_flags[$name]:-}" "$work/$name" &
    running=$((running + 1))
done
wait || true

failures=0
cpu_total=0
printf '%-22s %-6s %-14s %10s %5s %7s %7s %7s  %s\n' variant expect result states depth build \
    search cpu note
for name in "${names[@]}"; do
    if [ -s "$work/$name/line" ]; then
        cat "$work/$name/line"
        cpu_total=$(awk -v t="$cpu_total" '{ sub(/s$/, "", $8); print t + $8; exit }' \
            "$work/$name/line")
        if head -1 "$work/$name/line" | grep -q ' UNEXPECTED'; then failures=$((failures + 1)); fi
    else
        printf '%-22s did not finish  UNEXPECTED\n' "$name"
        failures=$((failures + 1))
    fi
done
echo "model check: $((${#names[@]} - failures)) of ${#names[@]} variants as expected," \
    "$(($(date +%s) - total_start)) s of wall time with $jobs at a time," \
    "$(printf '%.0f' "$cpu_total") s of CPU time"
[ "$failures" = 0 ]
