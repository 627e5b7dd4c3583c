# common.sh — shared by bench_convert.sh and bench_verify.sh (sourced, not run).
#
# Finds the binaries, makes sure /usr/bin/time exists, generates the fixture
# once (reused while its stamp file matches the generator's arguments), and
# provides timed_run, which runs a command under /usr/bin/time -v and sets
# RUN_SEC (wall seconds, nanosecond clock), RUN_CPU (user+sys seconds) and
# RUN_RSS_KB (peak RSS).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

die() { echo "${0##*/}: $*" >&2; exit 1; }

# find_binaries: FLASHIFY / GEN_FIXTURE from the environment, else build/.
find_binaries() {
    FLASHIFY=${FLASHIFY:-$ROOT/build/flashify}
    GEN_FIXTURE=${GEN_FIXTURE:-$(dirname "$FLASHIFY")/bench/gen_fixture}
    [ -x "$FLASHIFY" ] || die "no flashify binary at $FLASHIFY (build it, or set FLASHIFY=)"
    [ -x "$GEN_FIXTURE" ] || die "no gen_fixture at $GEN_FIXTURE (cmake --build build --target gen_fixture, or set GEN_FIXTURE=)"
}

# ensure_time: GNU time is what reports "Maximum resident set size"; the
# shell keyword `time` does not.  Debian package: time.
ensure_time() {
    [ -x /usr/bin/time ] && return 0
    echo "installing GNU time (Debian package 'time') ..." >&2
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y time >/dev/null 2>&1 ||
        { $sudo apt-get update >/dev/null 2>&1 && $sudo apt-get install -y time >/dev/null 2>&1; } ||
        die "/usr/bin/time is missing and 'apt-get install time' failed"
}

# ensure_fixture PRESET DIR [gen args...]: DIR/PRESET holds the checkpoint.
# A stamp file next to it (outside the checkpoint, so cp -r and flashify
# never see it) records the arguments; a missing or different stamp means a
# half-written or stale fixture, which is regenerated from scratch.
# Extra generator arguments get their own directory name, so the plain
# preset fixture is not regenerated back and forth.
ensure_fixture() {
    local preset=$1 dir=$2; shift 2
    local name=$preset
    [ $# -gt 0 ] && name=$preset$(printf '%s' "$*" | tr -c 'A-Za-z0-9' '_')
    FIXTURE=$dir/$name
    local stamp="$dir/$name.stamp" want="gen_fixture --preset $preset $*"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$FIXTURE" ]; then
        echo "fixture: reusing $FIXTURE"
        return 0
    fi
    mkdir -p "$dir"
    rm -rf "$FIXTURE" "$stamp"
    echo "fixture: generating $FIXTURE ($want)"
    if [ "$preset" = qwen3_5_moe ]; then
        # Qwen3.5-MoE with fused 3-D experts: the test suite's generator's
        # config and names, tiled values (bench/gen_moe.py)
        nice -n "${NICE:-10}" python3 "$BENCH_DIR/gen_moe.py" "$@" "$FIXTURE" || die "gen_moe.py failed"
    else
        nice -n "${NICE:-10}" "$GEN_FIXTURE" --preset "$preset" "$@" "$FIXTURE" ||
            die "gen_fixture failed"
    fi
    echo "$want" > "$stamp"
}

# dir_bytes DIR: total size of the regular files under DIR.
dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}'; }

# warm DIR: read every file once so the page cache holds the source.
warm() { find "$1" -type f -exec cat {} + > /dev/null; }

# timed_run LOG CMD...: runs CMD under /usr/bin/time -v (niced unless
# NICE=0), stdout+stderr of CMD to LOG.  Sets RUN_SEC, RUN_CPU, RUN_RSS_KB,
# RUN_RC.
timed_run() {
    local log=$1; shift
    local tv; tv=$(mktemp)
    local t0 t1
    t0=$(date +%s.%N)
    nice -n "${NICE:-10}" /usr/bin/time -v -o "$tv" "$@" > "$log" 2>&1
    RUN_RC=$?
    t1=$(date +%s.%N)
    RUN_SEC=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
    RUN_RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
    RUN_CPU=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$tv")
    rm -f "$tv"
}

# median: of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
