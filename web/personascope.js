// Personascope's JavaScript API: a small language model on WebGPU with persona vectors (monitor, steer, extract,
// screen). The model runs in a module Web Worker (worker.js); this class turns the worker's messages into
// promises. Types: personascope.d.ts. Every failure is a rejected promise carrying an Error with a clear message
// and a stable `code` (ErrorCode in personascope.d.ts) for programs to branch on.
//
//   import { Personascope } from './personascope.js';
//   const ps = new Personascope();
//   await ps.loadModel('models/SmolLM2-135M-Instruct.Q4_1.gguf', { onProgress: (p) => console.log(p) });
//   const reply = await ps.chat([{ role: 'user', content: 'Hi' }], { max_tokens: 32 }, (t) => console.log(t.text));

/** Requests that run for a while and can be cancelled by abort() or an AbortSignal. */
const LONG = new Set(['loadModel', 'chat', 'extract', 'evaluate', 'screen']);

export class Personascope {
  #worker = null;
  #options;
  #next = 1;
  #pending = new Map(); // id -> {resolve, reject, onEvent, op}
  #ready = null;
  #broken = false; // the worker's engine trapped: the next loadModel starts a fresh worker
  #lost = false; // onDeviceLost has been called

  /**
   * @param {{workerUrl?: string|URL, glueUrl?: string|URL, onDeviceLost?: (message: string) => void}} [options]
   *   where worker.js and the wasm-bindgen glue
   *   (personascope-web.js) live; both default to this module's directory.
   */
  constructor(options = {}) {
    this.#options = {
      workerUrl: options.workerUrl ?? new URL('./worker.js', import.meta.url),
      glueUrl: options.glueUrl ?? new URL('./personascope-web.js', import.meta.url),
      onDeviceLost: options.onDeviceLost ?? null,
    };
    this.#spawn();
  }

  /**
   * Does this browser have a usable WebGPU adapter? Never rejects.
   * @returns {Promise<{ok: boolean, reason?: string, adapter?: {vendor: string, architecture: string, description: string}}>}
   */
  static async checkWebGPU() {
    if (typeof navigator === 'undefined' || !('gpu' in navigator)) {
      const reason = typeof isSecureContext !== 'undefined' && !isSecureContext
        ? 'WebGPU needs a secure page: open it over https or from localhost / 127.0.0.1.'
        : 'This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or another browser ' +
          'with WebGPU enabled (on Linux, Chromium needs --enable-unsafe-webgpu).';
      return { ok: false, reason };
    }
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (!adapter) {
        return { ok: false, reason: 'WebGPU is present but offers no adapter: the GPU may be blocklisted or disabled (see chrome://gpu).' };
      }
      const i = adapter.info ?? {};
      return { ok: true, adapter: { vendor: i.vendor ?? '', architecture: i.architecture ?? '', description: i.description ?? '' } };
    } catch (err) {
      return { ok: false, reason: `WebGPU failed to give an adapter: ${err.message}` };
    }
  }

  #spawn() {
    this.#worker = new Worker(this.#options.workerUrl, { type: 'module', name: 'personascope' });
    this.#worker.onmessage = (e) => this.#receive(e.data);
    this.#worker.onerror = (e) => {
      e.preventDefault?.();
      this.#failAll(`the model worker failed: ${e.message || 'it could not be started (is worker.js served?)'}`, 'engine_stopped');
    };
    this.#worker.onmessageerror = () => this.#failAll('a message from the model worker could not be read', 'internal');
    this.#ready = this.#request('init', { glueUrl: String(this.#options.glueUrl) });
    // Failures surface in the calls that await it; do not report an unhandled rejection here.
    this.#ready.catch(() => {});
  }

  #failAll(error, code) {
    for (const [, p] of this.#pending) p.reject(coded(code, error));
    this.#pending.clear();
  }

  #receive(msg) {
    const p = this.#pending.get(msg.id);
    if (!p) return;
    if ('event' in msg) {
      try {
        p.onEvent?.(msg.event);
      } catch (err) {
        console.error('personascope: a progress or token callback threw', err);
      }
      return;
    }
    this.#pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else {
      const err = coded(msg.code ?? 'internal', msg.error);
      if (err.code === 'device_lost' && !this.#lost) {
        // Once per device: every later call fails the same way until the page is reloaded.
        this.#lost = true;
        try {
          this.#options.onDeviceLost?.(err.message);
        } catch (e) {
          console.error('personascope: onDeviceLost threw', e);
        }
      }
      if (msg.fatal) {
        err.fatal = true;
        this.#broken = true;
      }
      p.reject(err);
    }
  }

  #request(op, args = {}, onEvent = null, signal = null, transfer = []) {
    if (!this.#worker) return Promise.reject(coded('engine_stopped', 'this Personascope was terminated'));
    if (signal?.aborted) return Promise.reject(coded('cancelled', 'cancelled'));
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onEvent, op });
      signal?.addEventListener('abort', () => this.#worker?.postMessage({ op: 'cancel', id }), { once: true });
      try {
        this.#worker.postMessage({ id, op, args }, transfer);
      } catch (err) {
        this.#pending.delete(id);
        reject(coded('invalid_input', `${op}: the arguments cannot be sent to the worker (${err.message})`));
      }
    });
  }

  async #call(op, args, onEvent, signal, transfer) {
    await this.#ready;
    return this.#request(op, args, onEvent, signal, transfer);
  }

  /** The built-in trait definitions (the paper's seven traits). */
  async builtinTraits() {
    return (await this.#ready).traits;
  }

  /**
   * Loads a GGUF model from a URL (downloaded with progress and kept in the browser's Cache API, checked by size
   * and sha256 on the next visit and downloaded again if the copy is broken or partial) or from a File/Blob.
   * A model that fails to load leaves the previous one in place.
   */
  async loadModel(source, { onProgress, cache = true, warmup = true, signal } = {}) {
    if (this.#broken && this.#worker) {
      this.#worker.terminate();
      this.#failAll('the model worker was restarted', 'engine_stopped');
      this.#broken = false;
      this.#spawn();
    }
    if (typeof source === 'string' || source instanceof URL) {
      return this.#call('loadModel', { url: String(source), cache, warmup }, onProgress, signal);
    }
    if (typeof Blob !== 'undefined' && source instanceof Blob) {
      return this.#call('loadModel', { blob: source, name: source.name, warmup }, onProgress, signal);
    }
    throw coded('invalid_input', 'loadModel: the source must be a URL string, a File or a Blob');
  }

  /**
   * Destroys the GPU device as a driver reset would, so that a page can test its recovery path; resolves to the
   * loss reason. Every later call fails with code 'device_lost' until the page is reloaded.
   */
  async loseDevice() {
    return this.#call('loseDevice');
  }

  /** Model and device facts, or null when no model is loaded. */
  async deviceInfo() {
    return this.#call('info');
  }

  /** Prompt token ids of a conversation (the model's chat template applied). */
  async encode(messages) {
    return this.#call('encode', { messages });
  }

  /**
   * Streams a reply to `messages`; `onToken` gets each token with its trait scores. abort() or options.signal
   * stop it early: the promise then resolves with the reply so far and stop = "cancelled".
   */
  async chat(messages, options = {}, onToken = null) {
    const { signal, ...engineOptions } = options;
    const onEvent = onToken ? (e) => onToken(stripType(e)) : null;
    return this.#call('chat', { messages, options: engineOptions }, onEvent, signal);
  }

  /** Stops whatever long request (load, chat, extraction, evaluation, screening) is running or queued. */
  abort() {
    for (const [id, p] of this.#pending) {
      if (LONG.has(p.op)) this.#worker?.postMessage({ op: 'cancel', id });
    }
  }

  /** Steering for the next replies: [{vector, layer, alpha, positions?}] (an empty array turns it off). */
  async setSteering(entries) {
    return this.#call('setSteering', { entries });
  }

  /** Monitored traits: [{vector, layer?}] (the layer defaults to the vector's recommended one). */
  async setMonitor(entries) {
    return this.#call('setMonitor', { entries });
  }

  async vectors() {
    return this.#call('vectors');
  }

  /** Imports a control-vector GGUF (ours, llama.cpp's or repeng's) made for the loaded model. */
  async importVector(source, name) {
    if (typeof Blob !== 'undefined' && source instanceof Blob) {
      return this.#call('importVector', { blob: source, name: name ?? source.name });
    }
    if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
      const bytes = source instanceof ArrayBuffer ? new Uint8Array(source) : new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
      return this.#call('importVector', { bytes: bytes.slice(), name: name ?? 'vector.gguf' });
    }
    throw coded('invalid_input', 'importVector: the source must be a File, Blob, ArrayBuffer or Uint8Array');
  }

  /** The vector as a control-vector GGUF file. */
  async exportVector(id) {
    return this.#call('exportVector', { id });
  }

  async removeVector(id) {
    return this.#call('removeVector', { id });
  }

  /** Extracts a trait vector (a built-in name or a definition); it is added, calibrated, to the vectors. */
  async extract(trait, options = {}, onProgress = null) {
    const { signal, ...rest } = options;
    return this.#call('extract', { trait, options: rest }, onProgress, signal);
  }

  /** Evaluates a vector (separation per layer, steering sweep) and stores the recommended layer in it. */
  async evaluate(trait, vectorId, options = {}, onProgress = null) {
    const { signal, ...rest } = options;
    return this.#call('evaluate', { trait, vector: vectorId, options: rest }, onProgress, signal);
  }

  /** Screens a JSONL data set (text or a File/Blob) with a vector; malformed lines are listed, not fatal. */
  async screen(vectorId, jsonl, options = {}, onProgress = null) {
    const { signal, ...rest } = options;
    const data = typeof Blob !== 'undefined' && jsonl instanceof Blob ? { blob: jsonl } : { text: String(jsonl) };
    return this.#call('screen', { vector: vectorId, ...data, options: rest }, onProgress, signal);
  }

  /** The original JSONL lines of the last screened data set with these line numbers. */
  async exportSamples(lines) {
    return this.#call('exportSamples', { lines });
  }

  /** CSV text (RFC 4180, guarded against spreadsheet formula injection). */
  async csv(header, rows) {
    return this.#call('csv', { header, rows });
  }

  /** Models kept in the browser's cache: [{url, size, sha256, saved}]. */
  async cacheStatus() {
    return this.#call('cacheStatus');
  }

  /** Forgets one cached model (by URL) or all of them. */
  async clearCache(url) {
    return this.#call('clearCache', { url });
  }

  /** Stops the worker and frees the GPU memory; this object cannot be used afterwards. */
  terminate() {
    this.#worker?.terminate();
    this.#worker = null;
    this.#failAll('this Personascope was terminated', 'engine_stopped');
  }
}

/** An Error with a stable `code`. */
function coded(code, message) {
  const err = new Error(message);
  err.code = code;
  return err;
}

function stripType(e) {
  const { type, ...rest } = e;
  return rest;
}
