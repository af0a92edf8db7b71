// The model's thread: a module Web Worker that owns the wasm engine, so long GPU calls never freeze the page.
//
// Protocol (personascope.js is the only client):
//   page -> worker  {id, op, args}        one request; answered once with {id, ok: true, result} or
//                                          {id, ok: false, error, code, fatal?}; {id, event} messages may come first
//                                          (download progress, streamed tokens, extraction progress).
//   page -> worker  {op: 'cancel', id}    cancels that request: dropped if still queued, aborted if running.
//
// wasm-bindgen refuses a second call into the engine while an async one is in flight ("recursive use of an
// object"), so requests run strictly one after another from a queue; cancellation goes through the engine's
// AbortHandle, which is a separate object and may be used at any time.

const CACHE_BYTES = 'personascope-models-v1';
const CACHE_META = 'personascope-models-meta-v1';
const WARMUP_MESSAGES = JSON.stringify([
  { role: 'system', content: 'Reply briefly.' },
  { role: 'user', content: 'Hi' },
]);

let wasm = null; // the wasm-bindgen module, once initialised
let engine = null; // wasm Engine
let abortHandle = null;
let modelMeta = null; // {source, bytes, cache, info}
let broken = null; // set after a wasm trap: the instance can no longer be trusted

const queue = [];
let running = null; // {id, op, cancelled}

const post = (msg, transfer) => self.postMessage(msg, transfer ?? []);

/** An Error with a stable `code` (the ErrorCode names of personascope.d.ts). */
function fail(code, message) {
  const err = new Error(message);
  err.code = code;
  return err;
}
const event = (id, payload) => post({ id, event: payload });

self.onmessage = (e) => {
  const msg = e.data;
  if (msg?.op === 'cancel') {
    cancel(msg.id);
    return;
  }
  queue.push({ id: msg.id, op: msg.op, args: msg.args ?? {}, cancelled: false });
  if (!running) void drain();
};

function cancel(id) {
  const queued = queue.findIndex((r) => r.id === id);
  if (queued >= 0) {
    const [r] = queue.splice(queued, 1);
    post({ id: r.id, ok: false, error: 'cancelled before it started', code: 'cancelled' });
    return;
  }
  if (running && (id === undefined || running.id === id)) {
    running.cancelled = true;
    abortHandle?.abort();
  }
}

async function drain() {
  while (queue.length > 0) {
    running = queue.shift();
    const { id, op, args } = running;
    try {
      if (broken) throw fail('engine_stopped', broken);
      const handler = handlers[op];
      if (!handler) throw fail('invalid_input', `unknown request "${op}"`);
      const { result, transfer } = wrap(await handler(args, (payload) => event(id, payload), running));
      post({ id, ok: true, result }, transfer);
    } catch (err) {
      const fatal = err instanceof WebAssembly.RuntimeError;
      if (fatal) {
        // A trap (a bug in the engine): wasm state may be half-updated, so refuse further calls.
        broken = `the engine stopped after an internal error (${err.message}); load the model again`;
        engine = null;
        abortHandle = null;
      }
      post({ id, ok: false, error: message(err, op), code: errorCode(err, fatal), fatal });
    }
    running = null;
  }
}

// Handlers may return {result, transfer} to move big buffers instead of copying them.
function wrap(value) {
  return value && typeof value === 'object' && 'transfer' in value && 'result' in value ? value : { result: value };
}

function errorCode(err, fatal) {
  if (fatal) return 'engine_stopped';
  if (typeof err?.code === 'string') return err.code;
  if (/recursive use of an object|already mutably borrowed/.test(String(err?.message))) return 'busy';
  return 'internal';
}

function message(err, op) {
  const text = err instanceof Error ? err.message : String(err);
  if (/recursive use of an object|already mutably borrowed/.test(text)) {
    return `${op}: the engine was busy (${text})`;
  }
  return text || `${op} failed`;
}

async function ensureWasm(glueUrl) {
  if (wasm) return wasm;
  let mod;
  const url = new URL(glueUrl || './personascope-web.js', self.location.href).href;
  try {
    mod = await import(url);
  } catch (err) {
    throw fail('engine_stopped', `could not load the engine's JavaScript (${url}): ${err.message}. Was the page built with trunk?`);
  }
  await mod.default();
  wasm = mod;
  return wasm;
}

function needEngine() {
  if (!engine) throw fail('no_model', 'no model is loaded: load a model first');
  return engine;
}

const parse = (json) => JSON.parse(json);

// ---- model bytes: download with progress, Cache API with an integrity record, files -------------------------

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Reads a response or blob stream into one buffer, reporting {stage, loaded, total} as bytes arrive. */
async function readStream(stream, total, stage, progress, isCancelled) {
  const reader = stream.getReader();
  // Preallocate when the size is known so a 1 GB model is not held twice while it is assembled.
  let buffer = total > 0 ? new Uint8Array(total) : null;
  const chunks = [];
  let loaded = 0;
  let lastReport = 0;
  for (;;) {
    if (isCancelled()) {
      await reader.cancel().catch(() => {});
      throw fail('cancelled', 'cancelled');
    }
    const { done, value } = await reader.read();
    if (done) break;
    if (buffer && loaded + value.length <= buffer.length) buffer.set(value, loaded);
    else {
      if (buffer) {
        // More bytes than announced (a compressed transfer): fall back to collecting chunks.
        chunks.push(buffer.subarray(0, loaded));
        buffer = null;
      }
      chunks.push(value);
    }
    loaded += value.length;
    const now = performance.now();
    if (now - lastReport > 100) {
      lastReport = now;
      progress({ stage, loaded, total });
    }
  }
  progress({ stage, loaded, total });
  if (buffer) return { bytes: loaded === buffer.length ? buffer : buffer.subarray(0, loaded), loaded };
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return { bytes: out, loaded };
}

async function openCaches() {
  if (!self.caches) return null;
  try {
    return { bytes: await caches.open(CACHE_BYTES), meta: await caches.open(CACHE_META) };
  } catch {
    return null; // e.g. an insecure origin or a storage-disabled profile: run without a cache
  }
}

/** The validators a response gives for its file: ETag, Last-Modified, and the size when it is exact. */
function validators(response) {
  const length = Number(response.headers.get('content-length') ?? NaN);
  const exact = !response.headers.get('content-encoding') && Number.isFinite(length) && length > 0;
  return { etag: response.headers.get('etag'), lastModified: response.headers.get('last-modified'), size: exact ? length : null };
}

/**
 * Asks the server whether the file behind `url` changed since the copy in `meta` was saved: a HEAD request with
 * the saved ETag / Last-Modified (304: unchanged), else a comparison of the validators it sends, strongest
 * first. Returns {changed, checked}; unchecked (offline, a server that sends no validators, or a cross-origin host
 * that refuses the conditional request) keeps the cached copy.
 */
async function revalidate(url, meta) {
  const headers = {};
  if (meta.etag) headers['If-None-Match'] = meta.etag;
  if (meta.lastModified) headers['If-Modified-Since'] = meta.lastModified;
  let response;
  try {
    response = await fetch(url, { method: 'HEAD', headers, cache: 'no-store' });
  } catch {
    return { changed: false, checked: false };
  }
  if (response.status === 304) return { changed: false, checked: true };
  if (!response.ok) return { changed: false, checked: false };
  const now = validators(response);
  if (meta.etag && now.etag) return { changed: now.etag !== meta.etag, checked: true };
  if (meta.lastModified && now.lastModified) return { changed: now.lastModified !== meta.lastModified, checked: true };
  if (now.size !== null) return { changed: now.size !== meta.size, checked: true };
  return { changed: false, checked: false };
}

/**
 * The cached copy of `url` if it is whole, matches its recorded size and sha256, and the server does not have a
 * newer file behind the URL; otherwise null + why.
 */
async function readCached(c, url, progress, isCancelled) {
  const metaResponse = await c.meta.match(url);
  const response = await c.bytes.match(url);
  if (!metaResponse && !response) return { bytes: null, why: null };
  if (!metaResponse) return { bytes: null, why: 'the cached copy has no integrity record (an interrupted save)' };
  if (!response) return { bytes: null, why: 'the cached copy is missing' };
  let meta;
  try {
    meta = await metaResponse.json();
  } catch {
    return { bytes: null, why: 'the integrity record is unreadable' };
  }
  // Before reading a large copy: is it still the file the URL serves?
  progress({ stage: 'revalidate' });
  const fresh = await revalidate(url, meta);
  if (fresh.changed) return { bytes: null, why: 'the file behind the URL changed since it was saved', changed: true };
  let bytes;
  try {
    ({ bytes } = await readStream(response.body, meta.size, 'cache', progress, isCancelled));
  } catch (err) {
    if (isCancelled()) throw err;
    return { bytes: null, why: `the cached copy could not be read (${err.message})` };
  }
  if (bytes.length !== meta.size) {
    return { bytes: null, why: `the cached copy has ${bytes.length} bytes, ${meta.size} were saved (partial)` };
  }
  progress({ stage: 'verify' });
  if ((await sha256Hex(bytes)) !== meta.sha256) return { bytes: null, why: 'the cached copy fails its sha256 check' };
  return { bytes, meta, checked: fresh.checked };
}

async function download(url, progress, isCancelled) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw fail(
      'download_failed',
      `could not download ${url}: ${err.message} (offline, the server does not allow this page (CORS), ` +
        `or the page's Content-Security-Policy blocks the host)`,
    );
  }
  if (!response.ok) throw fail('download_failed', `could not download ${url}: HTTP ${response.status} ${response.statusText}`.trim());
  const length = Number(response.headers.get('content-length') ?? 0);
  // A compressed transfer announces the compressed size: do not mistake it for the file's size.
  const exact = !response.headers.get('content-encoding');
  const total = exact ? length : 0;
  if (!response.body) throw fail('download_failed', `could not download ${url}: the response has no body`);
  const { bytes } = await readStream(response.body, total, 'download', progress, isCancelled);
  if (exact && length > 0 && bytes.length !== length) {
    throw fail('download_failed', `the download of ${url} stopped early: ${bytes.length} of ${length} bytes`);
  }
  const { etag, lastModified } = validators(response);
  return { bytes, etag, lastModified };
}

function checkGguf(bytes, name) {
  const magic = bytes.length >= 4 ? String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]) : '';
  if (magic !== 'GGUF') {
    const size = bytes.length === 1 ? '1 byte' : `${bytes.length} bytes`;
    throw fail('not_gguf', `${name} is not a GGUF model file (${size}; a GGUF file starts with the letters "GGUF")`);
  }
}

async function modelBytes(args, progress, req) {
  const isCancelled = () => req.cancelled;
  if (args.blob) {
    const name = args.name || args.blob.name || 'the file';
    const { bytes } = await readStream(args.blob.stream(), args.blob.size, 'read', progress, isCancelled);
    checkGguf(bytes, name);
    return { bytes, name, cache: 'file' };
  }
  const url = new URL(args.url, self.location.href).href;
  if (!/^https?:$/.test(new URL(url).protocol)) throw fail('invalid_input', `only http(s) model URLs can be loaded, not ${url}`);
  const c = args.cache === false ? null : await openCaches();
  let repaired = null;
  let updated = false;
  if (c) {
    const hit = await readCached(c, url, progress, isCancelled);
    if (hit.bytes) return { bytes: hit.bytes, name: url, cache: 'hit', sha256: hit.meta.sha256, revalidated: hit.checked };
    if (hit.why) {
      repaired = hit.why;
      updated = Boolean(hit.changed);
      await Promise.all([c.bytes.delete(url), c.meta.delete(url)]);
    }
  }
  const { bytes, etag, lastModified } = await download(url, progress, isCancelled);
  checkGguf(bytes, url);
  if (!c) return { bytes, name: url, cache: 'off' };
  progress({ stage: 'verify' });
  const sha256 = await sha256Hex(bytes);
  try {
    // Bytes first, then the record: a copy without its record is treated as partial on the next visit.
    await c.bytes.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
    const meta = { url, size: bytes.length, sha256, etag, lastModified, saved: new Date().toISOString() };
    await c.meta.put(url, new Response(JSON.stringify(meta), { headers: { 'content-type': 'application/json' } }));
  } catch (err) {
    // A full quota must not stop the model from loading; say so instead.
    await Promise.all([c.bytes.delete(url), c.meta.delete(url)]).catch(() => {});
    return { bytes, name: url, cache: 'not-saved', cacheError: err.message, sha256 };
  }
  const cache = updated ? 'updated' : repaired ? 'repaired' : 'saved';
  return { bytes, name: url, cache, repaired: updated ? null : repaired, sha256 };
}

// ---- requests ------------------------------------------------------------------------------------------------

const handlers = {
  async init({ glueUrl }) {
    const w = await ensureWasm(glueUrl);
    return { traits: parse(w.builtinTraits()), webgpu: Boolean(self.navigator?.gpu) };
  },

  async loadModel(args, progress, req) {
    const w = await ensureWasm(args.glueUrl);
    if (!self.navigator?.gpu) {
      throw fail('no_webgpu', 'WebGPU is not available in this browser (navigator.gpu is missing in the worker)');
    }
    const started = performance.now();
    const src = await modelBytes(args, progress, req);
    const fetchMs = performance.now() - started;
    if (req.cancelled) throw fail('cancelled', 'cancelled');
    progress({ stage: 'upload', loaded: 0, total: src.bytes.length });
    let t = performance.now();
    // Load the new model before dropping the old one, so a file that fails to load leaves the page working.
    const size = src.bytes.length;
    const next = await w.Engine.load(src.bytes, (done, total) =>
      progress({ stage: 'upload', loaded: Math.round((size * done) / total), total: size }));
    const uploadMs = performance.now() - t;
    progress({ stage: 'upload', loaded: src.bytes.length, total: src.bytes.length });
    if (engine) engine.free();
    engine = next;
    abortHandle = engine.abortHandle();
    // The first call compiles every pipeline (seconds on a software adapter): pay it here, not in the first reply.
    progress({ stage: 'warmup', loaded: 0, total: 1 });
    t = performance.now();
    // Two tokens: the prompt pipelines and one decode step.
    if (args.warmup !== false) await engine.greedy(WARMUP_MESSAGES, 2);
    const warmupMs = performance.now() - t;
    progress({ stage: 'warmup', loaded: 1, total: 1 });
    const info = parse(engine.info());
    modelMeta = { name: src.name, bytes: src.bytes.length, cache: src.cache, sha256: src.sha256 ?? null };
    return {
      info,
      source: src.name,
      bytes: src.bytes.length,
      sha256: src.sha256 ?? null,
      cache: src.cache,
      repaired: src.repaired ?? null,
      revalidated: src.revalidated ?? null,
      cacheError: src.cacheError ?? null,
      timing: { fetchMs, uploadMs, warmupMs },
      vectors: parse(engine.vectors()),
    };
  },

  async unloadModel() {
    if (engine) engine.free();
    engine = null;
    abortHandle = null;
    modelMeta = null;
  },

  /** Destroys the GPU device as a driver reset would: for testing a page's recovery path. */
  async loseDevice() {
    const e = needEngine();
    e.loseDevice();
    // The browser reports the loss through a promise: give it a few turns of the event loop.
    for (let i = 0; i < 100 && !e.deviceLost(); i++) await new Promise((r) => setTimeout(r, 50));
    return e.deviceLost() ?? null;
  },

  async info() {
    if (!engine) return null;
    return { ...parse(engine.info()), source: modelMeta };
  },

  async encode({ messages }) {
    return Array.from(needEngine().encode(JSON.stringify(messages)));
  },

  async chat({ messages, options }, progress) {
    const e = needEngine();
    const started = performance.now();
    let first = null;
    let last = null;
    const json = await e.chat(JSON.stringify(messages), JSON.stringify(options ?? {}), (tokenJson) => {
      last = performance.now();
      if (first === null) first = last;
      progress({ type: 'token', ...parse(tokenJson), ms: last - started });
    });
    const out = parse(json);
    const n = out.ids.length;
    // First token: the prompt's forward pass (plus the monitor's reading of it) and one sampling step.
    out.timing = {
      total_ms: performance.now() - started,
      first_token_ms: first === null ? null : first - started,
      prefill_tok_s: first === null ? null : out.prompt_tokens / ((first - started) / 1000),
      decode_tok_s: n > 1 && last > first ? (n - 1) / ((last - first) / 1000) : null,
    };
    return out;
  },

  async setSteering({ entries }) {
    needEngine().setSteering(JSON.stringify(entries ?? []));
  },

  async setMonitor({ entries }) {
    needEngine().setMonitor(JSON.stringify(entries ?? []));
  },

  async vectors() {
    return engine ? parse(engine.vectors()) : [];
  },

  async importVector({ bytes, blob, name }) {
    const e = needEngine();
    const data = blob ? new Uint8Array(await blob.arrayBuffer()) : new Uint8Array(bytes);
    return parse(e.importVector(data, name || blob?.name || 'vector.gguf'));
  },

  async exportVector({ id }) {
    const bytes = needEngine().exportVector(id);
    return { result: bytes, transfer: [bytes.buffer] };
  },

  async removeVector({ id }) {
    needEngine().removeVector(id);
  },

  async extract({ trait, options }, progress) {
    const traitJson = JSON.stringify(trait);
    return parse(await needEngine().extract(traitJson, JSON.stringify(options ?? {}), (p) => progress(parse(p))));
  },

  async evaluate({ trait, vector, options }, progress) {
    const e = needEngine();
    return parse(await e.evaluate(JSON.stringify(trait), vector, JSON.stringify(options ?? {}), (p) => progress(parse(p))));
  },

  async screen({ vector, text, blob, options }, progress) {
    const e = needEngine();
    // The file's bytes go to the engine undecoded, so that an invalid UTF-8 byte rejects only its own line.
    const jsonl = blob ? new Uint8Array(await blob.arrayBuffer()) : new TextEncoder().encode(String(text ?? ''));
    return parse(await e.screen(vector, jsonl, JSON.stringify(options ?? {}), (p) => progress(parse(p))));
  },

  async exportSamples({ lines }) {
    return needEngine().exportSamples(JSON.stringify(lines));
  },

  async csv({ header, rows }) {
    if (!wasm) throw fail('engine_stopped', 'the engine is not initialised');
    return wasm.csv(JSON.stringify(header), JSON.stringify(rows));
  },

  async cacheStatus() {
    const c = await openCaches();
    if (!c) return { available: false, entries: [] };
    const entries = [];
    for (const request of await c.meta.keys()) {
      const meta = await (await c.meta.match(request))?.json().catch(() => null);
      entries.push(meta ?? { url: request.url, size: null, sha256: null });
    }
    return { available: true, entries };
  },

  async clearCache({ url }) {
    const c = await openCaches();
    if (!c) return false;
    if (url) {
      const key = new URL(url, self.location.href).href;
      await Promise.all([c.bytes.delete(key), c.meta.delete(key)]);
    } else {
      await Promise.all([caches.delete(CACHE_BYTES), caches.delete(CACHE_META)]);
    }
    return true;
  },
};
