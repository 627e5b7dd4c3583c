#!/usr/bin/env bash
# Builds the libFuzzer harnesses with clang (ASan + UBSan) into build-fuzz
# and runs each for a bounded time.  Exit status 1 on any finding; the
# crashing input is left in build-fuzz/artifacts/.
#   bash tests/fuzz/run.sh [SECONDS_PER_HARNESS]   (default 60)
# FUZZ_BUILD_DIR overrides build-fuzz.  The seed corpus in
# tests/fuzz/corpus/ is only read; new inputs go to a scratch copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
build=${FUZZ_BUILD_DIR:-build-fuzz}
command -v clang >/dev/null || { echo "fuzz: clang is needed (apt-get install clang)" >&2; exit 1; }

CC=clang cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DFLASHIFY_FUZZ=ON \
  -DFLASHIFY_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_st_header fuzz_config_index fuzz_checkpoint_dir

mkdir -p "$build/artifacts"
status=0
for h in fuzz_st_header fuzz_config_index fuzz_checkpoint_dir; do
  work=$(mktemp -d "${TMPDIR:-/tmp}/flashify-$h.XXXXXX")
  log="$build/$h.log"
  if "$build/tests/fuzz/$h" -max_total_time="$secs" -timeout=20 -rss_limit_mb=3000 \
       -print_final_stats=1 -dict=tests/fuzz/safetensors.dict \
       -artifact_prefix="$build/artifacts/$h-" "$work" "tests/fuzz/corpus/$h" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $h: ${runs:-?} executions in ${secs}s, no finding"
  else
    echo "fuzz: $h: FINDING (log: $log, input in $build/artifacts/)" >&2
    grep -E "ERROR|runtime error|SUMMARY|bad message|refused|does not read back" "$log" | head -5 >&2 || true
    status=1
  fi
  rm -rf "$work"
done
exit $status
