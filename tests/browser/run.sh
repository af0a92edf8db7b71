#!/usr/bin/env bash
# The web app in headless Chromium (WebGPU on SwiftShader), driven like a user with playwright-core, against the
# native CPU reference: builds the page with trunk (web/serve.sh --build-only), computes the references with the
# CLI (a small impolite vector, greedy replies with monitoring and steering, a screening run), serves the page on
# 127.0.0.1 and runs tests/browser/app.mjs. Prints one PASS/FAIL line per test and the total.
#
#   bash tests/browser/run.sh   # environment: MAX_TOKENS (6), ARTIFACTS (screenshots; default a new temp dir),
#                               # SKIP_BUILD=1 (reuse dist/), PORT
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
model="models/SmolLM2-135M-Instruct.Q4_1.gguf"
export MAX_TOKENS="${MAX_TOKENS:-6}"
export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-$root/target}"
# The reference vector and replies: a steering strength and layer that visibly change a 6-token greedy reply.
steer_layer=20
steer_alpha=8

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
if [ ! -x /usr/bin/chromium ]; then
  apt-get update && apt-get install -y chromium
fi
if [ ! -d "$here/node_modules/playwright-core" ] || [ ! -x "$here/node_modules/.bin/tsc" ]; then
  (cd "$here" && npm install --no-audit --no-fund)
fi
/usr/bin/chromium --version 2>/dev/null; echo "node $(node --version)"

work="$(mktemp -d /tmp/personascope-browser.XXXXXX)"
artifacts="${ARTIFACTS:-$work/artifacts}"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  # Keep the screenshots; drop the rest.
  find "$work" -mindepth 1 -maxdepth 1 ! -name artifacts -exec rm -rf {} +
}
trap cleanup EXIT

step "TypeScript declarations (tsc --noEmit --strict)"
# The declarations must compile, and type the API's uses the README shows (tests/browser/api-types.ts).
"$here/node_modules/.bin/tsc" --noEmit --strict --target es2022 --lib es2022,dom --module esnext \
  --moduleResolution bundler web/personascope.d.ts "$here/api-types.ts"
echo "declarations OK"

step "page build (trunk)"
if [ "${SKIP_BUILD:-}" = 1 ] && [ -f dist/index.html ]; then
  echo "SKIP_BUILD=1: reusing dist/"
else
  bash web/serve.sh --build-only
fi

step "native CPU references"
cargo build --release -q -p personascope-cli
ps="$target/release/personascope"
fx="$work/fixtures"
mkdir -p "$fx"
# The references take about two minutes on 2 cores: reuse them while the CLI, the model and the inputs are the same.
key=$( (sha256sum "$ps" "$model" "$here/fixtures/screen.jsonl" "$here/run.sh" | cut -d' ' -f1; echo "$MAX_TOKENS") | sha256sum | cut -c1-16)
cache="$target/browser-references/$key"
if [ -f "$cache/complete" ]; then
  echo "reusing $cache"
  cp "$cache"/* "$fx/"
else
  echo '[{"role":"user","content":"What is the capital of France?"}]' >"$fx/messages.json"
  # A vector from few samples is enough to monitor and steer; eval --save stores the recommended layer in it.
  "$ps" extract --model "$model" --trait impolite --mode prompt-last --questions 2 --pairs 1 --out "$fx/impolite.gguf"
  "$ps" eval --model "$model" --trait impolite --vector "$fx/impolite.gguf" --questions 2 --pairs 1 \
    --layers "$steer_layer" --alphas 2 --save --json >"$fx/eval-report.json"
  "$ps" generate --model "$model" --messages "$fx/messages.json" --max-tokens "$MAX_TOKENS" --greedy --json \
    --monitor "$fx/impolite.gguf" >"$fx/expected-chat.json"
  "$ps" generate --model "$model" --messages "$fx/messages.json" --max-tokens "$MAX_TOKENS" --greedy --json \
    --monitor "$fx/impolite.gguf" --steer "$fx/impolite.gguf:$steer_layer:$steer_alpha" >"$fx/expected-steer.json"
  echo "{\"layer\": $steer_layer, \"alpha\": $steer_alpha}" >"$fx/steer.json"
  # The page's own extraction and evaluation, at the settings the browser test types in: 1 pair, 4 extraction
  # questions, 2 neutral items, then 2 evaluation questions, steering layer 20, alpha 2.
  "$ps" extract --model "$model" --trait impolite --mode prompt-last --questions 4 --pairs 1 --calibration-items 2 \
    --out "$fx/page-extract.gguf" --json >"$fx/page-extract.json"
  "$ps" eval --model "$model" --trait impolite --vector "$fx/page-extract.gguf" --questions 2 --pairs 1 \
    --layers 20 --alphas 2 --neutral-items 2 --json >"$fx/page-eval.json"
  cp "$here/fixtures/screen.jsonl" "$fx/"
  "$ps" screen --model "$model" --vector "$fx/impolite.gguf" --data "$fx/screen.jsonl" --cheap --json \
    --out "$fx/screen-out.jsonl" >"$fx/expected-screen.json" 2>/dev/null
  mkdir -p "$cache"
  cp "$fx"/* "$cache/"
  touch "$cache/complete"
fi
cp "$here/fixtures/not-a-model.txt" "$fx/"
# A file that starts like a GGUF and stops: the engine's parser must reject it.
printf 'GGUF\003\000\000\000' >"$fx/broken.gguf"
python3 -c "import json,sys; [print(f, json.dumps({k: json.load(open(sys.argv[1]+'/'+f))[k] for k in ('ids','text')})) for f in ('expected-chat.json','expected-steer.json')]" "$fx"

step "serve on 127.0.0.1"
# The built page plus the test fixtures (hard links: the model is not copied).
site="$work/site"
cp -al "$root/dist" "$site" 2>/dev/null || cp -a "$root/dist" "$site"
mkdir -p "$site/fixtures"
cp "$fx/broken.gguf" "$site/fixtures/"
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
python3 web/serve.py --dir "$site" --port "$port" --quiet >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 50); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/index.html" && break
  sleep 0.2
done

step "headless Chromium"
SITE_FIXTURES="$site/fixtures" node "$here/app.mjs" "http://127.0.0.1:$port" "$fx" "$artifacts"
