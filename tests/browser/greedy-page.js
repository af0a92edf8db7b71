// Loads the wasm build, fetches the model, generates greedily and publishes the outcome as `window.result`
// (`{ok: true, ids, text, adapter, ...}` or `{ok: false, error}`). Parameters come from the query string:
// `?messages=<JSON>&max_tokens=8`.
import init, { Engine } from './pkg/personascope_web.js';

const logEl = document.getElementById('log');
const lines = [];
function log(line) {
  lines.push(line);
  logEl.textContent = lines.join('\n');
  console.log(line);
}

// `promise` must reject with an Error whose message contains `expected` (errors reach JS as JsError, not panics).
async function expectError(what, promise, expected) {
  try {
    await promise;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (!message.includes(expected)) throw new Error(`${what}: expected an error containing "${expected}", got "${message}"`);
    log(`${what}: rejected as expected: ${message}`);
    return;
  }
  throw new Error(`${what}: expected an error, got success`);
}

async function run() {
  const params = new URLSearchParams(location.search);
  const messages = params.get('messages') ?? '[{"role":"user","content":"Hi"}]';
  const maxTokens = Number(params.get('max_tokens') ?? '8');
  if (!navigator.gpu) throw new Error('navigator.gpu is missing: WebGPU is not enabled in this browser');

  let t = performance.now();
  await init();
  const initMs = performance.now() - t;
  log(`wasm initialised in ${initMs.toFixed(0)} ms`);

  t = performance.now();
  const response = await fetch('./model.gguf');
  if (!response.ok) throw new Error(`fetching model.gguf: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const fetchMs = performance.now() - t;
  log(`model fetched: ${bytes.length} bytes in ${fetchMs.toFixed(0)} ms`);

  await expectError('loading 16 zero bytes', Engine.load(new Uint8Array(16)), 'loading the model');

  t = performance.now();
  const engine = await Engine.load(bytes);
  const loadMs = performance.now() - t;
  // wgpu reports only the adapter's description, which Chromium leaves empty: ask WebGPU directly as well.
  const info = (await navigator.gpu.requestAdapter())?.info;
  const browserAdapter = info ? `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.trim() : '?';
  const adapter = `${browserAdapter} (engine: ${engine.adapter().trim()})`;
  log(`loaded ${engine.modelName()} on ${adapter} in ${loadMs.toFixed(0)} ms`);

  await expectError('greedy on malformed messages', engine.greedy('not json', 8), 'messages must be');
  await expectError('greedy on no messages', engine.greedy('[]', 8), 'must not be empty');

  const promptIds = Array.from(engine.encode(messages));
  log(`prompt: ${promptIds.length} tokens`);
  // One token, twice (prefill + one decode step, read back): the first call includes the browser's lazy shader
  // compilation, the second is the warm first-token latency. The full run repeats the prefill, so
  // (its time - the warm one-token time) / (tokens - 1) is the decode time per token.
  t = performance.now();
  const first = Array.from(await engine.greedy(messages, 1));
  const coldMs = performance.now() - t;
  t = performance.now();
  await engine.greedy(messages, 1);
  const firstMs = performance.now() - t;
  log(`first token ${JSON.stringify(first)}: ${coldMs.toFixed(0)} ms cold, ${firstMs.toFixed(0)} ms warm`);
  t = performance.now();
  const ids = Array.from(await engine.greedy(messages, maxTokens));
  const generateMs = performance.now() - t;
  if (ids.length > 0 && first[0] !== ids[0]) throw new Error(`first token ${first[0]} differs on the rerun: ${ids[0]}`);
  const decodeTokS = ids.length > 1 ? (ids.length - 1) / ((generateMs - firstMs) / 1000) : NaN;
  const text = engine.decode(Uint32Array.from(ids));
  log(`generated ${ids.length} tokens in ${generateMs.toFixed(0)} ms: ${JSON.stringify(ids)}`);
  log(`text: ${JSON.stringify(text)}`);
  log(`decode: ${decodeTokS.toFixed(2)} tokens/s`);
  engine.free();
  return { ok: true, adapter, promptIds, ids, text, initMs, fetchMs, loadMs, coldMs, firstMs, generateMs, decodeTokS };
}

run().then(
  (result) => { window.result = result; log('done'); },
  (error) => {
    const message = error instanceof Error ? `${error.message}\n${error.stack ?? ''}` : String(error);
    log(`ERROR: ${message}`);
    window.result = { ok: false, error: message };
  },
);
