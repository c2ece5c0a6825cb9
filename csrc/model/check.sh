#!/usr/bin/env bash
# Model-checks csrc/model/grace.pml with spin, one run per variant, and
# compares each outcome with the expected one (see README.md beside this
# file).  Prints one line per variant; exits non-zero if any expectation is
# not met.  Build artefacts live in a temporary directory that is removed on
# exit.  MODEL_KEEP=1 keeps it, MODEL_VERBOSE=1 prints the story of every
# counterexample, MODEL_DEEP=1 adds runs with three grace periods and with
# three read sections.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model="$here/grace.pml"
cc=${CC:-cc}

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
# name | -D flags | expect: verify, or fail:<regex the violated assertion must match>
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
)
# Extra pan flags.  busted-gen-nowrap: the wrapped count also hangs the
# writer (an invalid end state, which pan would report first); -E looks for
# the safety violation past it.
declare -A pan_flags=([busted-gen-nowrap]=-E)
# Extra compiler flags: COLLAPSE (lossless state compression) keeps the
# biggest deep run under MEMLIM, at some cost in time.
declare -A cc_flags=([fence-mode-3sec]=-DCOLLAPSE)
# Three grace periods, or three read sections: more interleavings, about
# four minutes more on this machine.  Three sections in membarrier mode do
# not fit (see README).
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

trim() { printf '%s' "$1" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }

failures=0
total_start=$(date +%s)
printf '%-20s %-7s %-14s %9s %6s %8s  %s\n' variant expect result states depth time note
for entry in "${variants[@]}"; do
    IFS='|' read -r name defs expect <<<"$entry"
    defs=$(trim "$defs")
    expect=$(trim "$expect")
    panflags=${pan_flags[$name]:-}
    ccflags=${cc_flags[$name]:-}
    dir="$work/$name"
    mkdir -p "$dir"
    cp "$model" "$dir/grace.pml"
    note=""
    (
        cd "$dir"
        # shellcheck disable=SC2086 # word splitting of the flags is wanted
        spin -a $defs grace.pml >spin.log 2>&1 &&
            "$cc" -O2 -w -DSAFETY -DMEMLIM=2048 $ccflags -o pan pan.c >cc.log 2>&1 &&
            ./pan -m10000 -w24 $panflags >pan.log 2>&1
    ) || true
    log="$dir/pan.log"
    if [ ! -s "$log" ]; then
        result="broken"
        note="spin or cc failed: $(cat "$dir/spin.log" "$dir/cc.log" 2>/dev/null | head -3 | tr '\n' ' ')"
    else
        states=$(awk '/states, stored/ {print $1; exit}' "$log")
        depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$log" | head -1)
        secs=$(sed -n 's/^pan: elapsed time \([0-9.e+-]*\) seconds.*/\1/p' "$log" | head -1)
        errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$log" | head -1)
        violated=$(grep -m1 -E 'assertion violated|invalid end state' "$log" || true)
        # A search cut short (memory bound, depth limit) prints errors: 0 too.
        cut='max search depth too small|out of memory|aborting|reached -DMEMLIM bound'
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
        fail:*)
            if [ "$result" = counterexample ] && echo "$violated" | grep -q 'assertion violated' &&
                echo "$violated" | grep -qE "${expect#fail:}" && ! echo "$violated" | grep -q 'sb_len'; then
                ok=1
            fi
            ;;
    esac
    status="ok"
    if [ "$ok" != 1 ]; then
        status="UNEXPECTED"
        failures=$((failures + 1))
    fi
    printf '%-20s %-7s %-14s %9s %6s %7ss  %s %s\n' "$name" "${expect%%:*}" "$result" \
        "${states:--}" "${depth:--}" "${secs:--}" "$status" "$note"
    if [ "$result" = counterexample ] && [ "${MODEL_VERBOSE:-0}" = 1 ]; then
        # shellcheck disable=SC2086
        (cd "$dir" && spin -t $defs grace.pml 2>&1 | grep -E 'MSC:|assertion' | sed 's/^ */    /')
    fi
    states="" depth="" secs="" violated=""
done
echo "model check: $((${#variants[@]} - failures)) of ${#variants[@]} variants as expected," \
    "$(($(date +%s) - total_start)) s"
[ "$failures" = 0 ]
