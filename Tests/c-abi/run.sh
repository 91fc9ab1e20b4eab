#!/usr/bin/env bash
# Builds Tests/c-abi/abi_smoke.c against include/kaitian.h and libKaitianC.so and runs it with
# 1, 2 and 3 ranks (or the counts given as arguments, e.g. `run.sh 2 4`).
# Library: $KAITIAN_LIBRARY if set, else .build/$KAITIAN_BUILD_CONFIG (default debug), which is
# built first if it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -n "${KAITIAN_LIBRARY:-}" ]]; then
  libdir="$(cd "$(dirname "$KAITIAN_LIBRARY")" && pwd)"
else
  config="${KAITIAN_BUILD_CONFIG:-debug}"
  libdir="$root/.build/$config"
  if [[ ! -f "$libdir/libKaitianC.so" ]]; then
    (cd "$root" && swift build -c "$config" --product KaitianC)
  fi
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cc -std=c11 -Wall -Wextra -Werror -I "$root/include" "$root/Tests/c-abi/abi_smoke.c" \
  -L "$libdir" -lKaitianC -Wl,-rpath,"$libdir" -lm -o "$out/abi_smoke"
if [[ $# -eq 0 ]]; then set -- 1 2 3; fi
for ranks in "$@"; do
  "$out/abi_smoke" "$ranks"
done
