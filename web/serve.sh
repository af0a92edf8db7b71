#!/usr/bin/env bash
# Builds the web page and serves it, with the default model, on http://127.0.0.1:8080 (PORT overrides).
# On a fresh machine it first installs what is missing, from crates.io, npm and PyPI only (nothing from GitHub):
# the default model, the wasm32 target, wasm-bindgen-cli 0.2.130, trunk 0.21.14 and wasm-opt (npm binaryen@132).
#
#   bash web/serve.sh                # build (release) and serve
#   bash web/serve.sh --build-only   # build dist/ and stop (the browser tests use this)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
port="${PORT:-8080}"
wbg_version="0.2.130"
trunk_version="0.21.14"
export PATH="$root/web/node_modules/.bin:$HOME/.cargo/bin:$PATH"

say() { printf '==> %s\n' "$*"; }

say "default model"
bash models/fetch.sh

say "toolchain"
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# Build tools, not shipped code: their release profiles (trunk's is fat LTO with one codegen unit) are relaxed so
# that a fresh 2-core machine builds them in minutes, not half an hour.
quick_install() {
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install "$@"
}
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wbg_version" ]; then
  # Not --locked: the locked build wants a crate version this registry lacks.
  quick_install "wasm-bindgen-cli@$wbg_version"
fi
if [ "$(trunk --version 2>/dev/null)" != "trunk $trunk_version" ]; then
  # trunk 0.22 needs a newer rustc than the workspace's.
  quick_install "trunk@$trunk_version" --locked
fi
if [ "$(wasm-opt --version 2>/dev/null | cut -d' ' -f3)" != "132" ]; then
  (cd web && npm install --no-audit --no-fund)
fi
echo "$(wasm-bindgen --version), $(trunk --version), $(wasm-opt --version)"

say "trunk build --release"
# Trunk.toml pins the tool versions found above, so trunk downloads nothing.
trunk build --release
wasm="dist/personascope-web_bg.wasm"
js="dist/personascope-web.js"
page_js=$(cat dist/app.js dist/personascope.js dist/worker.js "$js" | gzip -9 | wc -c)
echo "built dist/: wasm $(stat -c %s "$wasm") bytes ($(gzip -9c "$wasm" | wc -c) gzipped), JavaScript $(cat dist/app.js dist/personascope.js dist/worker.js "$js" | wc -c) bytes (${page_js} gzipped)"

if [ "${1:-}" = "--build-only" ]; then
  exit 0
fi
say "serving on http://127.0.0.1:$port/"
exec python3 web/serve.py --dir dist --port "$port"
