#!/usr/bin/env bash
# Installs the Debian packages flashify needs (only those missing) and builds
# it into ./build.  Safe to run again; used by the README and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# (file: cpack -G DEB reads the binary's libraries with it.)
for pkg in build-essential cmake pkg-config python3 file libcjson-dev libcurl4-openssl-dev libssl-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
