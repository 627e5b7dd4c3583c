#!/usr/bin/env bash
# Builds flashify (installing what it needs) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j2 "$@"
