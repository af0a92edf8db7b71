#!/usr/bin/env bash
# Headless Chromium (WebGPU on SwiftShader) runs the wasm build of the GPU engine on the default model and must give
# the same greedy tokens as the native CPU reference. Installs what it needs (skipping what is present), builds the
# wasm, serves a test page on 127.0.0.1 and drives it with playwright-core.
#
#   bash tests/browser/run.sh            # environment: MAX_TOKENS (8), TIMEOUT_MS, OUT_DIR (screenshot), PORT
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
wbg_version="0.2.130"
export MAX_TOKENS="${MAX_TOKENS:-8}"
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wbg_version" ]; then
  cargo install "wasm-bindgen-cli@$wbg_version"
fi
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ ! -x /usr/bin/chromium ]; then
  apt-get update && apt-get install -y chromium chromium-driver
fi
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm install --no-audit --no-fund)
fi
[ -f "$model" ] || bash models/fetch.sh
wasm-bindgen --version; /usr/bin/chromium --version 2>/dev/null; echo "node $(node --version)"

work="$(mktemp -d /tmp/personascope-browser.XXXXXX)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "native CPU reference"
messages="$work/messages.json"
echo '[{"role":"user","content":"What is the capital of France?"}]' >"$messages"
cargo run --release -q -p personascope-cli -- generate --model "$model" --messages "$messages" \
  --max-tokens "$MAX_TOKENS" --greedy --json --backend cpu >"$work/expected.json"
cat "$work/expected.json"

step "wasm build"
cargo build --release --target wasm32-unknown-unknown -p personascope-web
serve="$work/serve"
mkdir -p "$serve"
wasm-bindgen --target web --out-dir "$serve/pkg" "${CARGO_TARGET_DIR:-$root/target}/wasm32-unknown-unknown/release/personascope_web.wasm"
wasm="$serve/pkg/personascope_web_bg.wasm"
echo "wasm: $(stat -c %s "$wasm") bytes raw, $(gzip -9c "$wasm" | wc -c) bytes gzipped"
cp "$here/index.html" "$here/greedy-page.js" "$serve/"
ln -s "$root/$model" "$serve/model.gguf"

step "serve on 127.0.0.1"
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$serve" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 50); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/index.html" && break
  sleep 0.2
done

step "headless Chromium"
node "$here/greedy.mjs" "http://127.0.0.1:$port" "$messages" "$work/expected.json"
