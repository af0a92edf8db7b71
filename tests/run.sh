#!/usr/bin/env bash
# Runs every test: installs what they need (the default model, toolchain pieces), then format and lint checks,
# the wasm32 build of the model crate, and the whole test suite. Safe to run again; it only installs what is
# missing. Set CARGO_TARGET_DIR to reuse a build directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s  [%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }
# Logs of this run only (another run on the same machine must not mix into the counts).
logs="$(mktemp -d "${TMPDIR:-/tmp}/personascope-run.XXXXXX")"
trap 'rm -rf "$logs"' EXIT

step "default model"
bash models/fetch.sh

step "Vulkan software driver (lavapipe) for the GPU tests"
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    fi
fi
ls /usr/share/vulkan/icd.d/lvp_icd*.json
# Vulkan loaders warn on every process start without it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/personascope-xdg}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

step "toolchain (rust-toolchain.toml: rustfmt, clippy, wasm32 target)"
rustup show active-toolchain
rustup component add rustfmt clippy >/dev/null
rustup target add wasm32-unknown-unknown >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "wasm32 check of the model (no default features), GPU engine and persona crates"
# A check, not a build: the browser tests build the web crate, and with it these, for wasm32 in release.
cargo check --quiet --target wasm32-unknown-unknown -p personascope-model --no-default-features
cargo check --quiet --target wasm32-unknown-unknown -p personascope-gpu -p personascope-persona

step "cargo test"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$logs/test.log"
status=${PIPESTATUS[0]}
set -e

step "browser: the web app in headless Chromium (WebGPU on SwiftShader) vs the native reference"
set +e
bash tests/browser/run.sh 2>&1 | tee "$logs/browser.log"
browser=${PIPESTATUS[0]}
set -e

step "fuzz: every parser for ${FUZZ_SECONDS:-60} s each (tests/fuzz.sh)"
# CI's 90-minute limit comes first: the fuzz step runs when the suite so far has left room for it (a fresh
# machine spends most of its time installing and building; a machine with the build directories warm has room).
fuzz=0
if [ "$SECONDS" -lt $((${FUZZ_START_BEFORE_MIN:-50} * 60)) ]; then
    set +e
    bash tests/fuzz.sh 2>&1 | tee "$logs/fuzz.log"
    fuzz=${PIPESTATUS[0]}
    set -e
else
    echo "FUZZ-SKIP: $((SECONDS / 60)) min have passed; fuzzing now would risk CI's time limit (bash tests/fuzz.sh runs it)" | tee "$logs/fuzz.log"
fi

step "summary"
grep -E '^test result:|FAILED|panicked' "$logs/test.log" || true
passed=$(grep -Eo '[0-9]+ passed' "$logs/test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$logs/test.log" | awk '{s+=$1} END {print s+0}')
# Counts a step's PASS and FAIL lines (prefix: PASS/FAIL, or FUZZ-PASS/FUZZ-FAIL), prints them, and counts a
# step that exited non-zero without a FAIL line (e.g. its build failed) as one failure: sets $npass and $nfail.
count_lines() { # log, prefix, exit status, what
    grep -E "^$2(PASS|FAIL|SKIP)" "$1" || true
    npass=$(grep -c "^$2PASS" "$1" || true)
    nfail=$(grep -c "^$2FAIL" "$1" || true)
    if [ "$3" != 0 ] && [ "$nfail" = 0 ]; then
        echo "FAIL $4 did not run (exit $3)"
        nfail=1
    fi
}
# One PASS/FAIL line per browser test (tests/browser/app.mjs), one FUZZ-PASS/FAIL/SKIP line per fuzz target.
count_lines "$logs/browser.log" "" "$browser" "browser tests"
bpassed=$npass bfailed=$nfail
count_lines "$logs/fuzz.log" "FUZZ-" "$fuzz" "fuzz targets"
fpassed=$npass ffailed=$nfail
passed=$((passed + bpassed + fpassed))
failed=$((failed + bfailed + ffailed))
echo "tests: $passed passed, $failed failed (${SECONDS} s in all)"
[ "$status" = 0 ] && [ "$browser" = 0 ] && [ "$ffailed" = 0 ]
