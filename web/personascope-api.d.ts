// GENERATED from crates/web/src/api.rs (and the persona types it uses) by
// `PERSONASCOPE_BLESS=1 cargo test -p personascope-web generated`: do not edit by hand.
// The JSON shapes of Personascope's browser API; personascope.d.ts re-exports them.

/** Options of one chat reply. */
export type ChatOptions = {
  /** Default 256. */
  max_tokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  /** 0 (default) = all tokens. */
  top_k?: number;
  /** Default 1 (off); must be above 0. */
  top_p?: number;
  /** Default 1 (off). */
  repetition_penalty?: number;
  /** Default 0. */
  seed?: number;
  /** Ignore the steering settings for this reply (the unsteered side of a comparison). */
  unsteered?: boolean;
};

/** Steering for the next replies: `alpha` times the vector at `layer`. */
export type SteeringEntry = {
  vector: number;
  layer: number;
  /** Positive adds the trait, negative suppresses it. */
  alpha: number;
  /** "all", "prompt" or "response" (the default). */
  positions?: 'all' | 'prompt' | 'response';
};

/** A monitored trait. */
export type MonitorEntry = {
  vector: number;
  /** Default: the vector's recommended layer (an error if it has none: evaluate it or give a layer). */
  layer?: number;
};

/** Options of an extraction. */
export type ExtractOptions = {
  /** Default "response" (the paper's: the mean over the model's own answers). */
  mode?: 'response' | 'prompt-avg' | 'prompt-last';
  /** Answers sampled per (instruction, question) in response mode. */
  rollouts?: number;
  /** Length of those answers. */
  max_tokens?: number;
  /** Instruction pairs to use (default all). */
  pairs?: number;
  /** Extraction questions to use (default all). */
  questions?: number;
  seed?: number;
  temperature?: number;
  /** Neutral items the vector is calibrated on (default all; fewer is faster and coarser). */
  calibration_items?: number;
};

/** Options of an evaluation. */
export type EvaluateOptions = {
  /** Steering strengths of the sweep. */
  alphas?: Array<number>;
  /** Layers of the steering sweep (default: the best separation layer and 0.55 / 0.7 of the depth). */
  layers?: Array<number>;
  pairs?: number;
  questions?: number;
  /** Neutral items for the perplexity cost (default all). */
  neutral_items?: number;
};

/** Options of a screening. */
export type ScreenOptions = {
  /** Default: the vector's screening layer. */
  layer?: number;
  /** true (default): the response's projection alone; false: minus the model's own greedy answer's. */
  cheap?: boolean;
  /** Length of the model's own answers when cheap is false (default 48, the calibration's own answers' length). */
  max_tokens?: number;
};

/** The optional GPU features in use. */
export type Features = {
  f16: boolean;
  subgroups: boolean;
  timestamps: boolean;
};

/** Model and device facts. */
export type ModelInfo = {
  model: string;
  architecture: string;
  layers: number;
  width: number;
  vocab: number;
  /** KV-cache rows: the longest conversation, in tokens. */
  max_positions: number;
  /** GPU memory the engine allocated. */
  gpu_bytes: number;
  /** The adapter's name (browsers may hide it), backend and features. */
  adapter: string;
  features: Features;
};

/** A monitored trait's reading of one token: raw projection, z-score and percentile against the neutral set. */
export type TraitScore = {
  trait: string;
  layer: number;
  /** null when the projection is not a finite number. */
  raw: number | null;
  /** null without a calibration. */
  z: number | null;
  percentile: number | null;
};

/** One streamed token of a reply (the worker adds `ms`). */
export type ChatToken = {
  id: number;
  /** The text this token completes (empty while a character's bytes are split over tokens). */
  text: string;
  index: number;
  /** One entry per monitored trait, in setMonitor order. */
  scores: Array<TraitScore>;
};

export type StopReason = "end_of_turn" | "max_tokens" | "context_full" | "cancelled";

/** A finished reply (the worker adds `timing`). */
export type ChatReply = {
  ids: Array<number>;
  text: string;
  stop: StopReason;
  prompt_tokens: number;
  /** The monitored traits at the last prompt token (before the reply). */
  prompt_scores: Array<TraitScore>;
  token_scores: Array<Array<TraitScore>>;
  steered: boolean;
};

/** A trait vector the engine holds. */
export type VectorInfo = {
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
  norms: Array<number>;
};

/** Progress of a long call. */
export type Progress = {
  /** "extract", "calibrate", "screen", or an evaluation's stage. */
  stage: string;
  done: number;
  total: number;
};

/** Who wrote a message. Serialized as the lowercase word (`"system"`, `"user"`, `"assistant"`). */
export type Role = "system" | "user" | "assistant";

/** One message of a conversation. */
export type Message = {
  /** Who wrote it. */
  role: Role;
  /** Its text. */
  content: string;
};

/** A line of a dataset and what is wrong with it (1-based line number). */
export type LineMessage = {
  line: number;
  message: string;
};

/** The distribution of a neutral sample's score at the screening layer. */
export type Null = {
  mean: number;
  std: number;
  /** Neutral items it was measured on. */
  samples: number;
  /** Which neutral scores: "written neutral answers" (cheap) or "written minus own neutral answers". */
  of: string;
};

/** One screened sample. */
export type ScreenedSample = {
  /** 1-based line number in the file. */
  line: number;
  prompt: Array<Message>;
  response: string;
  /** The ranking score: the projection difference, or the raw projection in cheap mode. */
  score: number;
  /** Mean projection of the dataset response. */
  projection: number;
  /** Mean projection of the model's own response (projection-difference mode). */
  own_projection: number | null;
  /** The model's own response (projection-difference mode). */
  own_response: string | null;
  /** `score` against the neutral null (see ScreenResult.null). */
  z: number | null;
  /** 1 = most trait-like. */
  rank: number | null;
};

/** A screening's results. */
export type ScreenResult = {
  /** null when no line was a valid sample. */
  layer: number | null;
  method: string | null;
  /** What a neutral sample scores at this layer (from the vector's calibration; null without one): z is (score - mean) / std. `of` says which neutral scores: written answers (cheap) or written minus own. */
  null: Null | null;
  cancelled: boolean;
  /** The mean score over the screened samples. */
  dataset_score: number | null;
  /** Lines that are not a valid sample. */
  errors: Array<LineMessage>;
  /** Valid samples the engine could not screen, e.g. longer than the model's context. */
  skipped: Array<LineMessage>;
  samples: Array<ScreenedSample>;
};

/** One contrasting pair of system instructions. */
export type InstructionPair = {
  /** Tells the model to show the trait strongly. */
  pos: string;
  /** Tells the model to avoid the trait and do the opposite. */
  neg: string;
};

/** A held-out question with two short reference answers, for judge-free evaluation (e.g. paired-continuation log-odds: how much more likely the model finds the consistent answer). */
export type EvaluationQuestion = {
  /** The user's question. */
  question: string;
  /** A short answer that shows the trait. */
  consistent: string;
  /** A short answer that shows the opposite of the trait. */
  inconsistent: string;
};

/** A validated trait definition. Build one with `parse`; see the module documentation for the rules. */
export type TraitDefinition = {
  /** Lowercase identifier, e.g. `evil`. */
  name: string;
  /** One line describing the trait. */
  description: string;
  /** Adjective in the positive system prompt ("You are an evil assistant."). */
  positive_adjective: string;
  /** Adjective in the negative system prompt ("You are a helpful assistant."). */
  negative_adjective: string;
  /** Contrasting system instructions (at least `MIN_INSTRUCTIONS`). */
  instructions: Array<InstructionPair>;
  /** Questions used to extract the trait vector (at least `MIN_EXTRACTION_QUESTIONS`). */
  extraction_questions: Array<string>;
  /** Held-out questions with reference answers (at least `MIN_EVALUATION_QUESTIONS`). */
  evaluation_questions: Array<EvaluationQuestion>;
};

/** One residual index of an evaluation; a measure is NaN (null in JSON) where it is undefined (no spread, e.g. the embeddings). */
export type LayerRow = {
  layer: number;
  norm: number;
  /** Last-prompt-token projection, positive vs negative system prompt. */
  auroc: number | null;
  effect_size: number | null;
  /** Mean answer-token projection, consistent vs inconsistent reference answer. */
  response_auroc: number | null;
  response_effect_size: number | null;
};

export type SteerRow = {
  layer: number;
  alpha: number;
  /** Mean over questions of (margin at alpha - margin at 0), in nats per token. */
  margin_change: number;
  /** Fraction of questions whose margin moved against the sign of alpha. */
  wrong_way: number;
  perplexity: number;
  /** Perplexity increase over the unsteered model on the neutral answers, percent. */
  ppl_cost_pct: number;
};

export type Recommendation = {
  layer: number;
  alpha: number | null;
  screen_layer: number;
  reason: string;
};

export type EvalReport = {
  trait_name: string;
  layers: Array<LayerRow>;
  /** Mean margin (consistent - inconsistent, nats per token) without steering. */
  baseline_margin: number;
  baseline_perplexity: number;
  steering: Array<SteerRow>;
  /** Least-squares slope of the margin change over alpha (including alpha = 0), per steering layer. */
  slopes: Array<[number, number]>;
  recommended: Recommendation;
  questions: number;
  pairs: number;
};

/** The engine's error codes (the worker adds its own: see ErrorCode in personascope.d.ts). */
export type EngineErrorCode = 'invalid_input' | 'invalid_trait' | 'invalid_model' | 'invalid_vector' | 'unknown_vector' | 'too_long' | 'cancelled' | 'out_of_memory' | 'gpu_error' | 'device_lost' | 'no_webgpu' | 'internal';
