#!/usr/bin/env bash
# bench_verify.sh — times `flashify verify SRC OUT` on a Llama-shaped fixture.
#
# Usage: bench/bench_verify.sh [--preset 1b|8b|tiny|qwen3_5_moe] [--dir DIR] [--runs N] [--gen-arg ARG]...
#            [--no-nice] [-- extra arguments for flashify verify]
#
#   --preset   fixture shape (default 1b); generated once under --dir and reused
#   --dir      default /tmp/flashify-bench
#   --gen-arg  one extra gen_fixture argument (repeat), e.g. --gen-arg --untied;
#              such a fixture gets its own directory
#   --runs     timed runs (default 1; the median is printed)
# The converted checkpoint is made once with `flashify SRC -o OUT` (not
# timed) and removed at the end.  Page cache warm.
# Environment: FLASHIFY (default build/flashify), GEN_FIXTURE.
set -u
. "$(dirname "$0")/common.sh"

preset=1b dir=/tmp/flashify-bench runs=1
v_args=() gen_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) preset=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --gen-arg) gen_args+=("$2"); shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --no-nice) NICE=0; shift ;;
        --) shift; v_args+=("$@"); break ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case $runs in ''|*[!0-9]*|0) die "--runs needs a positive integer" ;; esac

find_binaries
ensure_time
ensure_fixture "$preset" "$dir" ${gen_args[@]+"${gen_args[@]}"}
src=$FIXTURE out=$dir/out-verify
trap 'rm -rf "$out"' EXIT
trap 'exit 130' INT TERM

rm -rf "$out"
log=$(mktemp)
echo "converting $src -> $out (not timed)"
nice -n "${NICE:-10}" "$FLASHIFY" "$src" -o "$out" > "$log" 2>&1 ||
    { cat "$log" >&2; die "flashify conversion failed"; }
warm "$src"; warm "$out"

times=() rss=()
for i in $(seq 1 "$runs"); do
    timed_run "$log" "$FLASHIFY" verify "$src" "$out" "${v_args[@]}"
    [ "$RUN_RC" = 0 ] || { cat "$log" >&2; die "flashify verify exited $RUN_RC"; }
    times+=("$RUN_SEC"); rss+=("$RUN_RSS_KB")
    printf '  run %d verify %7.3f s  %8.1f MiB peak RSS\n' "$i" "$RUN_SEC" \
        "$(awk -v k="$RUN_RSS_KB" 'BEGIN {print k/1024}')"
done
echo "--- last verify output ---"; tail -n 5 "$log"
rm -f "$log"
med=$(printf '%s\n' "${times[@]}" | median)
bytes=$(dir_bytes "$src")
rss_max=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
awk -v m="$med" -v b="$bytes" -v p="$preset" -v r="$rss_max" 'BEGIN {
    printf "preset %s (%.3f GB): flashify verify median %.3f s, peak RSS %.1f MiB\n", p, b/1e9, m, r/1024 }'
