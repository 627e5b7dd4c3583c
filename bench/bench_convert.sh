#!/usr/bin/env bash
# bench_convert.sh — times `flashify SRC -o OUT` against `cp -r SRC OUT` on
# the same Llama-shaped checkpoint, alternately in one run, page cache warm.
#
# Usage: bench/bench_convert.sh [--preset 1b|8b|tiny|qwen3_5_moe] [--dir DIR] [--runs N] [--gen-arg ARG]...
#            [--threads N] [--memory SIZE] [--sync] [--no-nice] [--clean]
#            [-- extra flashify arguments]
#
#   --preset   fixture shape (default 1b: Llama-3.2-1B, one 2.5 GB file;
#              8b: Llama-3.1-8B, 4 shards, 16 GB; tiny: a few hundred KB;
#              qwen3_5_moe: Qwen3.5-MoE with fused 3-D experts, 2.4 GB,
#              written by bench/gen_moe.py, which takes the --gen-arg's)
#   --dir      where the fixture and the outputs live (default /tmp/flashify-bench);
#              the fixture is generated once and reused
#   --gen-arg  one extra gen_fixture argument (repeat), e.g. --gen-arg --untied;
#              such a fixture gets its own directory
#   --runs     timed runs of each command (default 5); medians are printed
#   --threads, --memory   passed to flashify
#   --sync     time `CMD && sync` for both, so data still dirty in the page
#              cache is counted (fair if flashify fsyncs and cp does not)
#   --no-nice  run at normal priority (default: nice 10, not to starve others)
#   --clean    remove the fixture at the end (default: keep it for next time;
#              the outputs are always removed)
# Environment: FLASHIFY (default build/flashify), GEN_FIXTURE (default
# build/bench/gen_fixture).
set -u
. "$(dirname "$0")/common.sh"

preset=1b dir=/tmp/flashify-bench runs=5 sync=0 clean=0
fl_args=() gen_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) preset=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --gen-arg) gen_args+=("$2"); shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --threads|--memory) fl_args+=("$1" "$2"); shift 2 ;;
        --sync) sync=1; shift ;;
        --no-nice) NICE=0; shift ;;
        --clean) clean=1; shift ;;
        --) shift; fl_args+=("$@"); break ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case $runs in ''|*[!0-9]*|0) die "--runs needs a positive integer" ;; esac

find_binaries
ensure_time
ensure_fixture "$preset" "$dir" ${gen_args[@]+"${gen_args[@]}"}

src=$FIXTURE out_fl=$dir/out-flashify out_cp=$dir/out-cp
bytes=$(dir_bytes "$src")
need_kb=$(( bytes / 1024 * 2 + 1048576 ))     # two outputs never coexist, but be safe
avail_kb=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
[ "$avail_kb" -gt "$need_kb" ] || die "not enough space in $dir: need ~$((need_kb/1048576)) GiB, have $((avail_kb/1048576)) GiB"

cleanup() { rm -rf "$out_fl" "$out_cp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

cpus=$(nproc)
echo "source: $src ($(awk -v b="$bytes" 'BEGIN {printf "%.3f GB", b/1e9}'), $(find "$src" -name '*.safetensors' | wc -l) safetensors file(s))"
echo "flashify: $FLASHIFY ${fl_args[*]:-}"
echo "machine: $cpus CPU(s), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "runs: $runs each, alternating; page cache warm; sync-in-timing: $([ $sync = 1 ] && echo yes || echo no); nice ${NICE:-10}"

# The commands under test.  With --sync the trailing sync is part of the
# timed command (sh -c), so both pay for their dirty pages.
fl_cmd=("$FLASHIFY" "$src" -o "$out_fl" "${fl_args[@]}")
cp_cmd=(cp -r "$src" "$out_cp")
if [ $sync = 1 ]; then
    fl_cmd=(sh -c '"$@" && sync' sh "${fl_cmd[@]}")
    cp_cmd=(sh -c '"$@" && sync' sh "${cp_cmd[@]}")
fi

# Before each timed run: remove the previous output and flush, so neither
# command pays for the other's writeback.  Then a warm-up read of the source.
prepare() { rm -rf "$out_fl" "$out_cp"; sync; warm "$src"; }

prepare
log=$(mktemp)
fl_times=() cp_times=() fl_rss=() cp_rss=() fl_cpu=() cp_cpu=()
for i in $(seq 1 "$runs"); do
    # alternate which goes first, so slow drift (thermal, other jobs) hits both
    order="fl cp"; [ $((i % 2)) = 0 ] && order="cp fl"
    for which in $order; do
        prepare
        if [ $which = fl ]; then
            timed_run "$log" "${fl_cmd[@]}"
            [ "$RUN_RC" = 0 ] || { cat "$log" >&2; die "flashify failed (exit $RUN_RC)"; }
            out_bytes=$(dir_bytes "$out_fl")
            fl_times+=("$RUN_SEC"); fl_rss+=("$RUN_RSS_KB"); fl_cpu+=("$RUN_CPU")
        else
            timed_run "$log" "${cp_cmd[@]}"
            [ "$RUN_RC" = 0 ] || { cat "$log" >&2; die "cp failed (exit $RUN_RC)"; }
            cp_times+=("$RUN_SEC"); cp_rss+=("$RUN_RSS_KB"); cp_cpu+=("$RUN_CPU")
        fi
        printf '  run %d %-8s %7.3f s wall %7.2f s cpu  %8.1f MiB peak RSS\n' "$i" \
            "$([ $which = fl ] && echo flashify || echo cp)" "$RUN_SEC" "$RUN_CPU" \
            "$(awk -v k="$RUN_RSS_KB" 'BEGIN {print k/1024}')"
    done
done
rm -f "$log"

fl_med=$(printf '%s\n' "${fl_times[@]}" | median)
cp_med=$(printf '%s\n' "${cp_times[@]}" | median)
fl_max=$(printf '%s\n' "${fl_rss[@]}" | sort -n | tail -1)
cp_max=$(printf '%s\n' "${cp_rss[@]}" | sort -n | tail -1)
fl_cmed=$(printf '%s\n' "${fl_cpu[@]}" | median)
cp_cmed=$(printf '%s\n' "${cp_cpu[@]}" | median)
echo
awk -v f="$fl_med" -v c="$cp_med" -v fr="$fl_max" -v cr="$cp_max" -v b="$bytes" -v p="$preset" \
    -v fc="$fl_cmed" -v cc="$cp_cmed" -v l="$(cut -d' ' -f1-3 /proc/loadavg)" -v ob="$out_bytes" 'BEGIN {
    printf "preset %s: %.3f GB in, flashify writes %.3f GB (GB/s below = source bytes / wall time)\n", p, b/1e9, ob/1e9
    printf "%-10s median %7.3f s  %6.2f GB/s  cpu %6.2f s  peak RSS %8.1f MiB\n", "flashify", f, b/1e9/f, fc, fr/1024
    printf "%-10s median %7.3f s  %6.2f GB/s  cpu %6.2f s  peak RSS %8.1f MiB\n", "cp -r", c, b/1e9/c, cc, cr/1024
    printf "ratio flashify/cp: %.2f (wall)   load average at end: %s\n", f/c, l
    if (ob != b) printf "ratio per byte written: %.2f (flashify time/output bytes over cp time/source bytes)\n", (f/ob)/(c/b)
}'

if [ $clean = 1 ]; then rm -rf "$FIXTURE" "$dir/$preset.stamp"; fi
