// Types of Personascope's JavaScript API (personascope.js). Every method that returns a promise rejects with a
// PersonascopeError: its message says what failed, its `code` what kind of failure it was; nothing in the engine
// panics into JavaScript. Residual index `layer` runs over 0..=N for a model of N blocks (0 = embeddings, k =
// output of block k-1).
//
// The JSON shapes the engine takes and gives are generated from its Rust types into personascope-api.d.ts
// (re-exported here); this file adds what the worker and this class add around them.

import type * as api from './personascope-api';
import type {
  EvalReport, Features, InstructionPair, EvaluationQuestion, LayerRow, LineMessage, Message, ModelInfo,
  MonitorEntry, Null, Progress, Recommendation, Role, ScreenedSample, ScreenResult, SteeringEntry, SteerRow,
  StopReason, TraitDefinition, TraitScore, VectorInfo,
} from './personascope-api';

export type {
  EvalReport, Features, InstructionPair, EvaluationQuestion, LayerRow, LineMessage, Message, ModelInfo,
  MonitorEntry, Null, Progress, Recommendation, Role, ScreenedSample, ScreenResult, SteeringEntry, SteerRow,
  StopReason, TraitDefinition, TraitScore, VectorInfo,
};

/**
 * What kind of failure a call met. Stable: a code is never renamed or reused for another kind of failure.
 * - invalid_input: arguments, options, messages or dataset text the engine cannot use;
 * - invalid_trait: a trait definition (or built-in name) that is not valid;
 * - invalid_model: a model file that cannot be loaded; not_gguf: a file that is not GGUF at all;
 * - invalid_vector: a vector file that cannot be read or was made for another model;
 * - unknown_vector: a vector id never given out, or removed; too_long: a conversation past the context;
 * - cancelled: stopped by abort() or a signal; out_of_memory: too little GPU memory for this model;
 * - gpu_error: the GPU reported an error; device_lost: the GPU device was lost (reload the page to continue);
 * - no_webgpu: no usable WebGPU adapter; download_failed: the model could not be downloaded;
 * - no_model: no model is loaded; busy: the engine was in another call; engine_stopped: the worker or the
 *   engine stopped (load a model again); internal: a bug.
 */
export type ErrorCode = api.EngineErrorCode | 'no_model' | 'busy' | 'engine_stopped' | 'download_failed' | 'not_gguf';

export interface PersonascopeError extends Error {
  code: ErrorCode;
  /** Set when the engine stopped (a trap): the next loadModel starts a new worker. */
  fatal?: boolean;
}

/**
 * One step of loadModel: asking the server whether a cached file changed, download / cache read / file read,
 * integrity check, GPU upload, warm-up.
 */
export interface LoadProgress {
  stage: 'revalidate' | 'download' | 'cache' | 'read' | 'verify' | 'upload' | 'warmup';
  /** Bytes (download, cache, read, upload) or steps (warmup) done; absent for `revalidate` and `verify`. */
  loaded?: number;
  /** 0 when the server did not announce a size. */
  total?: number;
}

export interface ModelLoad {
  info: ModelInfo;
  /** The URL or the file name. */
  source: string;
  bytes: number;
  sha256: string | null;
  /**
   * hit: read from the browser's cache (the server was asked first whether the file behind the URL changed:
   * ETag, Last-Modified or size); updated: the server has a different file now, and it was downloaded again;
   * saved: downloaded and cached; repaired: the cached copy was broken or partial and was downloaded again
   * (`repaired` says why); not-saved: downloaded, the cache refused it (`cacheError`); off: caching disabled or
   * unavailable; file: loaded from a File/Blob.
   */
  cache: 'hit' | 'updated' | 'saved' | 'repaired' | 'not-saved' | 'off' | 'file';
  repaired: string | null;
  /** For a cache hit: whether the server answered the check for a newer file (false: offline, or no validators). */
  revalidated: boolean | null;
  cacheError: string | null;
  timing: { fetchMs: number; uploadMs: number; warmupMs: number };
  vectors: VectorInfo[];
}

export interface DeviceInfo extends ModelInfo {
  source: { name: string; bytes: number; cache: string; sha256: string | null } | null;
}

/** The engine's chat options plus a signal that stops the reply, like abort(). */
export type ChatOptions = api.ChatOptions & { signal?: AbortSignal };

export type ChatToken = api.ChatToken & {
  /** Milliseconds since the request started. */
  ms: number;
};

export type ChatResult = api.ChatReply & {
  timing: { total_ms: number; first_token_ms: number | null; prefill_tok_s: number | null; decode_tok_s: number | null };
};

/** A built-in trait's name, or a full definition. */
export type TraitSpec = string | api.TraitDefinition;

export type ExtractOptions = api.ExtractOptions & { signal?: AbortSignal };
export type EvaluateOptions = api.EvaluateOptions & { signal?: AbortSignal };
export type ScreenOptions = api.ScreenOptions & { signal?: AbortSignal };

export interface WebGPUCheck {
  ok: boolean;
  reason?: string;
  adapter?: { vendor: string; architecture: string; description: string };
}

export declare class Personascope {
  /** Spawns the module worker. `workerUrl` / `glueUrl` default to worker.js / personascope-web.js beside this module. */
  /** `onDeviceLost(message)` runs once when a call first fails with code 'device_lost' (offer a reload there). */
  constructor(options?: { workerUrl?: string | URL; glueUrl?: string | URL; onDeviceLost?: (message: string) => void });
  static checkWebGPU(): Promise<WebGPUCheck>;
  builtinTraits(): Promise<TraitDefinition[]>;
  loadModel(
    source: string | URL | Blob | File,
    options?: { onProgress?: (p: LoadProgress) => void; cache?: boolean; warmup?: boolean; signal?: AbortSignal },
  ): Promise<ModelLoad>;
  deviceInfo(): Promise<DeviceInfo | null>;
  /** Destroys the GPU device as a driver reset would (to test a page's recovery); resolves to the loss reason. */
  loseDevice(): Promise<string | null>;
  encode(messages: Message[]): Promise<number[]>;
  chat(messages: Message[], options?: ChatOptions, onToken?: ((token: ChatToken) => void) | null): Promise<ChatResult>;
  /** Stops the running or queued long requests (load, chat, extract, evaluate, screen). */
  abort(): void;
  setSteering(entries: SteeringEntry[]): Promise<void>;
  setMonitor(entries: MonitorEntry[]): Promise<void>;
  vectors(): Promise<VectorInfo[]>;
  importVector(source: Blob | File | ArrayBuffer | Uint8Array, name?: string): Promise<VectorInfo>;
  /** A control-vector GGUF (llama.cpp's format plus personascope metadata). */
  exportVector(id: number): Promise<Uint8Array>;
  removeVector(id: number): Promise<void>;
  extract(trait: TraitSpec, options?: ExtractOptions, onProgress?: ((p: Progress) => void) | null): Promise<VectorInfo>;
  evaluate(trait: TraitSpec, vectorId: number, options?: EvaluateOptions, onProgress?: ((p: Progress) => void) | null): Promise<EvalReport>;
  screen(vectorId: number, jsonl: string | Blob, options?: ScreenOptions, onProgress?: ((p: Progress) => void) | null): Promise<ScreenResult>;
  exportSamples(lines: number[]): Promise<string>;
  csv(header: string[], rows: string[][]): Promise<string>;
  cacheStatus(): Promise<{ available: boolean; entries: { url: string; size: number | null; sha256: string | null; saved?: string }[] }>;
  clearCache(url?: string): Promise<boolean>;
  terminate(): void;
}
