// Types of Personascope's JavaScript API (personascope.js). Every method that returns a promise rejects with a
// PersonascopeError: its message says what failed, its `code` what kind of failure it was; nothing in the engine
// panics into JavaScript. Residual index `layer` runs over 0..=N for a model of N blocks (0 = embeddings, k =
// output of block k-1).

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
export type ErrorCode =
  | 'invalid_input' | 'invalid_trait' | 'invalid_model' | 'invalid_vector' | 'unknown_vector' | 'too_long'
  | 'cancelled' | 'out_of_memory' | 'gpu_error' | 'device_lost' | 'no_webgpu' | 'internal'
  | 'no_model' | 'busy' | 'engine_stopped' | 'download_failed' | 'not_gguf';

export interface PersonascopeError extends Error {
  code: ErrorCode;
  /** Set when the engine stopped (a trap): the next loadModel starts a new worker. */
  fatal?: boolean;
}

export type Role = 'system' | 'user' | 'assistant';

export interface Message {
  role: Role;
  content: string;
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

export interface ModelInfo {
  model: string;
  architecture: string;
  layers: number;
  width: number;
  vocab: number;
  max_positions: number;
  gpu_bytes: number;
  adapter: string;
  features: { f16: boolean; subgroups: boolean; timestamps: boolean };
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

/** A monitored trait's reading of one token: raw projection, z-score and percentile against the neutral set. */
export interface TraitScore {
  trait: string;
  layer: number;
  raw: number | null;
  z: number | null;
  percentile: number | null;
}

export interface ChatOptions {
  /** Default 256. */
  max_tokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  /** 0 = all tokens. */
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  seed?: number;
  /** Ignore the steering settings for this reply (the unsteered side of a comparison). */
  unsteered?: boolean;
  /** Stops the reply, like abort(). */
  signal?: AbortSignal;
}

export interface ChatToken {
  id: number;
  text: string;
  index: number;
  /** One entry per monitored trait, in setMonitor order. */
  scores: TraitScore[];
  /** Milliseconds since the request started. */
  ms: number;
}

export interface ChatResult {
  ids: number[];
  text: string;
  stop: 'end_of_turn' | 'max_tokens' | 'context_full' | 'cancelled';
  prompt_tokens: number;
  /** The monitored traits at the last prompt token (before the reply). */
  prompt_scores: TraitScore[];
  token_scores: TraitScore[][];
  steered: boolean;
  timing: { total_ms: number; first_token_ms: number | null; prefill_tok_s: number | null; decode_tok_s: number | null };
}

export interface SteeringEntry {
  vector: number;
  layer: number;
  /** Positive adds the trait, negative suppresses it. */
  alpha: number;
  /** Default "response". */
  positions?: 'all' | 'prompt' | 'response';
}

export interface MonitorEntry {
  vector: number;
  /** Default: the vector's recommended layer (an error if it has none: evaluate it or give a layer). */
  layer?: number;
}

export interface VectorInfo {
  id: number;
  trait: string | null;
  description: string | null;
  /** "response", "prompt-avg", "prompt-last" or "imported". */
  mode: string | null;
  model: string | null;
  layers: number;
  layer: number | null;
  alpha: number | null;
  screen_layer: number | null;
  /** Positive and negative samples averaged. */
  counts: [number, number] | null;
  calibrated: boolean;
  /** L2 norm of the direction at each residual index. */
  norms: number[];
}

export interface TraitDefinition {
  name: string;
  description: string;
  positive_adjective: string;
  negative_adjective: string;
  instructions: { pos: string; neg: string }[];
  extraction_questions: string[];
  evaluation_questions: { question: string; consistent: string; inconsistent: string }[];
}

/** A built-in trait's name, or a full definition. */
export type TraitSpec = string | TraitDefinition;

export interface Progress {
  stage: string;
  done: number;
  total: number;
}

export interface ExtractOptions {
  mode?: 'response' | 'prompt-avg' | 'prompt-last';
  rollouts?: number;
  max_tokens?: number;
  /** Instruction pairs to use (default all). */
  pairs?: number;
  /** Extraction questions to use (default all). */
  questions?: number;
  seed?: number;
  temperature?: number;
  /** Neutral items the vector is calibrated on (default all 64; fewer is faster and coarser). */
  calibration_items?: number;
  signal?: AbortSignal;
}

export interface EvaluateOptions {
  alphas?: number[];
  /** Layers of the steering sweep (default: the best separation layer and 0.55 / 0.7 of the depth). */
  layers?: number[];
  pairs?: number;
  questions?: number;
  /** Neutral items for the perplexity cost (default all 64). */
  neutral_items?: number;
  signal?: AbortSignal;
}

export interface EvalReport {
  trait_name: string;
  /** null where a measure is undefined (no spread, e.g. the embeddings). */
  layers: { layer: number; norm: number; auroc: number | null; effect_size: number | null; response_auroc: number | null; response_effect_size: number | null }[];
  baseline_margin: number;
  baseline_perplexity: number;
  steering: { layer: number; alpha: number; margin_change: number; wrong_way: number; perplexity: number; ppl_cost_pct: number }[];
  slopes: [number, number][];
  recommended: { layer: number; alpha: number | null; screen_layer: number; reason: string };
  questions: number;
  pairs: number;
}

export interface ScreenOptions {
  /** Default: the vector's screening layer. */
  layer?: number;
  /** true (default): the response's projection alone; false: minus the model's own greedy answer's. */
  cheap?: boolean;
  /** Length of the model's own answers when cheap is false (default 48, the length of the calibration's own answers). */
  max_tokens?: number;
  signal?: AbortSignal;
}

export interface ScreenedSample {
  /** 1-based line number in the file. */
  line: number;
  prompt: Message[];
  response: string;
  score: number;
  projection: number;
  own_projection: number | null;
  own_response: string | null;
  z: number | null;
  /** 1 = most trait-like. */
  rank: number;
}

export interface ScreenResult {
  layer: number | null;
  method: string | null;
  cancelled: boolean;
  dataset_score: number | null;
  /** Lines that are not a valid sample (1-based line numbers). */
  errors: { line: number; message: string }[];
  /** Valid samples the engine could not screen, e.g. longer than the model's context (when reported). */
  skipped?: { line: number; message: string }[];
  samples: ScreenedSample[];
  /** What a neutral sample scores at this layer (from the vector's calibration; null without one): z is
   *  (score - mean) / std. `of` says which neutral scores: written answers (cheap) or written minus own. */
  null: { mean: number; std: number; samples: number; of: string } | null;
}

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
