#!/usr/bin/env bash
# Fuzzes the decoders that read bytes from the network (store frames, requests, responses)
# with libFuzzer for a bounded time, then merges what it found into the committed corpus.
#
#   bash scripts/fuzz.sh [SECONDS]      default 60
#
# The target is Tests/KaitianFuzz; built with -sanitize=fuzzer,address into .build-fuzz. Any
# crash, sanitizer report or failed round trip stops the run with the input saved as
# .build-fuzz/crash-*; `swift test` replays the corpus (without the fuzzer) on every run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
corpus=Tests/KaitianFuzz/Corpus
work=.build-fuzz/corpus
if ! command -v swift >/dev/null 2>&1; then export PATH="/opt/swift/usr/bin:$PATH"; fi

echo "==> building the fuzz target (libFuzzer + AddressSanitizer)"
swift build --product KaitianFuzz --scratch-path .build-fuzz \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -D -Xswiftc KAITIAN_FUZZING
mkdir -p "$work" "$corpus"
# Swift's own crash backtracer trips AddressSanitizer; libFuzzer reports crashes itself.
export SWIFT_BACKTRACE=enable=no
echo "==> fuzzing for ${seconds}s"
.build-fuzz/debug/KaitianFuzz -max_total_time="$seconds" -max_len=4096 -timeout=5 \
  -rss_limit_mb=2048 -artifact_prefix=.build-fuzz/ -print_final_stats=1 "$work" "$corpus"
echo "==> merging new coverage into $corpus"
.build-fuzz/debug/KaitianFuzz -merge=1 -max_len=4096 "$corpus" "$work" 2>&1 | tail -1
echo "==> corpus: $(ls "$corpus" | wc -l) inputs"
