#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS each (default 60) with cargo fuzz on the nightly toolchain, from the
# committed seeds plus the repository's real files (models in tests/golden, datasets, trait files), into a scratch
# corpus outside the clone. Skips cleanly, saying why, when there is no nightly toolchain. Prints one line per
# target: FUZZ-PASS name (runs, seconds) or FUZZ-FAIL name (and the crashing input's path).
#
#   bash tests/fuzz.sh                     # every target, 60 s each
#   FUZZ_SECONDS=3600 bash tests/fuzz.sh model_load    # one target, longer
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
seconds="${FUZZ_SECONDS:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "FUZZ-SKIP: no nightly toolchain (rustup toolchain install nightly); the fuzz targets need one"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  # A build tool: its release profile is relaxed so that a fresh machine builds it in minutes.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo install cargo-fuzz --locked || exit 1
fi
# Outside the clone, reused by later runs: the instrumented builds (nightly, sanitizer) and the growing corpora.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/personascope/fuzz-target}"
scratch="${FUZZ_DIR:-$HOME/.cache/personascope/fuzz-corpus}"
mkdir -p "$scratch"

# target crate:seed dirs (relative to the repository root)
targets=(
  "parse crates/gguf/fuzz:crates/gguf/fuzz/seeds tests/golden"
  "model_load fuzz:tests/golden"
  "vector_file fuzz:fuzz/seeds/vector_file"
  "dataset fuzz:tests/data/screening"
  "trait_definition fuzz:crates/persona/traits"
  "chat_template fuzz:fuzz/seeds/chat_template"
  "tokenizer fuzz:fuzz/seeds/tokenizer"
)
want=("$@")
failed=0
for entry in "${targets[@]}"; do
  name="${entry%% *}"; rest="${entry#* }"; crate="${rest%%:*}"; seeds="${rest#*:}"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  corpus="$scratch/$name"
  mkdir -p "$corpus"
  seed_dirs=()
  for s in $seeds; do seed_dirs+=("$root/$s"); done
  log="$scratch/$name.log"
  # The model files are large inputs: allow them (libFuzzer's default max_len is 4096).
  (cd "$crate" && cargo +nightly fuzz run "$name" "$corpus" "${seed_dirs[@]}" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=2000000 -timeout=30 -print_final_stats=1) >"$log" 2>&1
  rc=$?
  runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    echo "FUZZ-PASS $name (${runs:-no summary})"
  else
    failed=$((failed + 1))
    echo "FUZZ-FAIL $name (exit $rc; log $log)"
    grep -E 'SUMMARY|panicked|Test unit written|ERROR' "$log" | head -5
  fi
done
exit $failed
