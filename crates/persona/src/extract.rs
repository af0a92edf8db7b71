//! Extraction of a trait vector (docs/method.md §3): for every extraction question and instruction pair,
//! the residual stream under the positive and the negative system prompt, averaged, and the raw difference of the
//! means at every residual index (not normalized, so alpha keeps the paper's units).

use personascope_model::{Flow, SamplingParams};

use crate::backend::{self, Backend, Layers, Plan, Span};
use crate::error::{PersonaError, Result};
use crate::traits::TraitDefinition;
use crate::vector_file::{TraitVector, VectorMeta};
use personascope_model::schedule::{self, GenSpec, PassSpec};

/// Which positions are averaged (section 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mean over the model's own generated response tokens (the paper's persona vector).
    Response,
    /// Mean over the prompt tokens (no generation).
    PromptAvg,
    /// The last prompt token (no generation; fastest).
    PromptLast,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Response => "response",
            Mode::PromptAvg => "prompt-avg",
            Mode::PromptLast => "prompt-last",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = PersonaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "response" => Ok(Mode::Response),
            "prompt-avg" => Ok(Mode::PromptAvg),
            "prompt-last" => Ok(Mode::PromptLast),
            other => Err(PersonaError::Input(format!(
                "unknown extraction mode {other:?} (expected response, prompt-avg or prompt-last)"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub mode: Mode,
    /// Responses sampled per (question, pair, polarity) in `response` mode (the paper: 10).
    pub rollouts: usize,
    /// Longest response in `response` mode (the paper: 1000).
    pub max_tokens: usize,
    /// Sampling of the responses (the paper: temperature 1, top-p 1).
    pub sampling: SamplingParams,
    /// Use only the first `n` instruction pairs / extraction questions (None: all).
    pub pairs: Option<usize>,
    pub questions: Option<usize>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            mode: Mode::Response,
            rollouts: 1,
            max_tokens: 64,
            sampling: SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 },
            pairs: None,
            questions: None,
        }
    }
}

/// Decides whether a generated response is used (the paper uses an LLM judge for trait and coherence scores).
pub trait ResponseFilter {
    /// `positive`: generated under the trait-expressing system prompt.
    fn keep(&mut self, question: &str, positive: bool, response: &str) -> bool;
    /// One line saying what the filter does, recorded in the vector file.
    fn describe(&self) -> String;
}

/// The default filter. It has no judge: it keeps every non-empty response, so the vector is the unfiltered mean
/// difference (docs/method.md §3.1: there is no judge), whether or not the model followed the system prompt.
pub struct KeepNonEmpty;

impl ResponseFilter for KeepNonEmpty {
    fn keep(&mut self, _: &str, _: bool, response: &str) -> bool {
        !response.trim().is_empty()
    }
    fn describe(&self) -> String {
        "none: every non-empty response is kept (no judge)".into()
    }
}

/// Where extraction is.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// One generated response (response mode), for inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResponseRecord {
    pub question: usize,
    pub pair: usize,
    pub rollout: usize,
    pub positive: bool,
    pub text: String,
    pub kept: bool,
}

#[derive(Debug, Clone)]
pub struct Extraction {
    pub vector: TraitVector,
    /// Samples averaged per polarity (positive, negative).
    pub kept: [u32; 2],
    /// Pairs of samples the filter dropped.
    pub dropped_pairs: u32,
    pub responses: Vec<ResponseRecord>,
}

struct Sums {
    rows: Vec<Vec<f64>>,
    count: u32,
}

impl Sums {
    fn new(layers: usize, d: usize) -> Self {
        Sums { rows: vec![vec![0.0; d]; layers], count: 0 }
    }
    fn add(&mut self, x: &Layers) {
        for (s, r) in self.rows.iter_mut().zip(x) {
            for (a, &b) in s.iter_mut().zip(r) {
                *a += b as f64;
            }
        }
        self.count += 1;
    }
    fn mean(&self) -> Vec<Vec<f64>> {
        let n = self.count.max(1) as f64;
        self.rows.iter().map(|r| r.iter().map(|x| x / n).collect()).collect()
    }
}

/// One (question, instruction pair, rollout) slot: its prompts under the positive and the negative system prompt.
struct Slot {
    question: usize,
    pair: usize,
    rollout: usize,
    prompts: [Vec<u32>; 2],
}

/// Extracts the vector of `def` from the model behind `backend`. Every prompt (and, in response mode, every
/// generation and its re-run) goes to the engine in one batch job. `progress` is called as batches finish and may
/// stop the run (an error then: a partial vector would be a different vector).
pub async fn extract<B: Backend>(
    backend: &mut B,
    def: &TraitDefinition,
    opts: &ExtractOptions,
    filter: &mut dyn ResponseFilter,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Extraction> {
    def.validate()?;
    let c = backend.config().clone();
    let (layers, d) = (c.n_layers + 1, c.d_model);
    let pairs = opts.pairs.unwrap_or(def.instructions.len()).clamp(1, def.instructions.len());
    let questions = opts.questions.unwrap_or(def.extraction_questions.len()).clamp(1, def.extraction_questions.len());
    let rollouts = if opts.mode == Mode::Response { opts.rollouts.max(1) } else { 1 };
    if opts.mode == Mode::Response && opts.max_tokens == 0 {
        return Err(PersonaError::Input("response mode needs max_tokens > 0".into()));
    }
    let mut slots = Vec::with_capacity(questions * pairs * rollouts);
    for (qi, question) in def.extraction_questions.iter().take(questions).enumerate() {
        for pair in 0..pairs {
            let mut prompts: [Vec<u32>; 2] = Default::default();
            for (k, positive) in [true, false].into_iter().enumerate() {
                let system = def.system_prompt(pair, positive).ok_or_else(|| {
                    PersonaError::Input(format!("instruction pair {pair} missing in trait {:?}", def.name))
                })?;
                prompts[k] = backend.chat_prompt(Some(&system), question)?;
            }
            for rollout in 0..rollouts {
                slots.push(Slot { question: qi, pair, rollout, prompts: prompts.clone() });
            }
        }
    }
    let total = slots.len();
    // Progress counts slots; response mode reports its generations as the first half of the work.
    let halves = if opts.mode == Mode::Response { 2 } else { 1 };
    let mut report = |base: usize, p: schedule::Progress| {
        let done = (base + p.done) / (2 * halves);
        progress(Progress { done: done.min(total), total })
    };
    let n = c.n_layers;
    // (slot, polarity) -> tokens of the pass and the positions averaged.
    let mut runs: Vec<(usize, usize, Vec<u32>, std::ops::Range<usize>)> = Vec::with_capacity(2 * total);
    let mut responses = Vec::new();
    let mut keep = vec![true; total];
    match opts.mode {
        Mode::PromptLast | Mode::PromptAvg => {
            for (i, s) in slots.iter().enumerate() {
                for k in 0..2 {
                    let p = s.prompts[k].len();
                    let range = if opts.mode == Mode::PromptLast { p - 1..p } else { 0..p };
                    runs.push((i, k, s.prompts[k].clone(), range));
                }
            }
        }
        Mode::Response => {
            let specs: Vec<GenSpec> = slots
                .iter()
                .flat_map(|s| (0..2).map(move |k| (s, k)))
                .map(|(s, k)| {
                    // A distinct, reproducible stream per sample; the pair index is in it so that the two polarities of
                    // a slot do not share randomness by accident.
                    let mut sampling = opts.sampling.clone();
                    sampling.seed = opts
                        .sampling
                        .seed
                        .wrapping_add(((s.question * pairs + s.pair) * rollouts + s.rollout) as u64 * 2 + k as u64);
                    GenSpec {
                        prompt: s.prompts[k].clone(),
                        max_tokens: opts.max_tokens,
                        sampling,
                        plan: Plan::default(),
                    }
                })
                .collect();
            let replies = backend::generate_polled(backend, &specs, None, &mut |p| report(0, p)).await?;
            if replies.iter().any(|r| r.stop == personascope_model::StopReason::Cancelled) {
                return Err(PersonaError::Cancelled);
            }
            for (j, reply) in replies.into_iter().enumerate() {
                let (i, k) = (j / 2, j % 2);
                let s = &slots[i];
                let question = &def.extraction_questions[s.question];
                let kept = !reply.ids.is_empty() && filter.keep(question, k == 0, &reply.text);
                responses.push(ResponseRecord {
                    question: s.question,
                    pair: s.pair,
                    rollout: s.rollout,
                    positive: k == 0,
                    text: reply.text.clone(),
                    kept,
                });
                keep[i] &= kept;
                let mut tokens = s.prompts[k].clone();
                let p = tokens.len();
                tokens.extend_from_slice(&reply.ids);
                let n_tok = tokens.len();
                runs.push((i, k, tokens, p..n_tok));
            }
            // Both polarities of a slot are kept or dropped together, as the released code does (aligned pairs).
            for (j, r) in responses.iter_mut().enumerate() {
                r.kept &= keep[j / 2];
            }
            runs.retain(|(i, ..)| keep[*i]);
        }
    }
    let specs: Vec<PassSpec> = runs
        .iter()
        .map(|(_, _, tokens, range)| {
            let span = Span::all_layers(range.clone(), n);
            let plan = if opts.mode == Mode::PromptLast {
                Plan { capture: Some(span), ..Default::default() }
            } else {
                Plan { mean: Some(span), ..Default::default() }
            };
            PassSpec { tokens: tokens.clone(), plan }
        })
        .collect();
    let base = if opts.mode == Mode::Response { 2 * total } else { 0 };
    let outs = backend::all_passes(backend, &specs, None, &mut |p| report(base, p)).await?;
    let (mut pos, mut neg) = (Sums::new(layers, d), Sums::new(layers, d));
    for ((_, k, ..), out) in runs.iter().zip(&outs) {
        let rows = match opts.mode {
            Mode::PromptLast => backend::last_rows(out)?.clone(),
            _ => out.mean.clone().unwrap_or_default(),
        };
        if *k == 0 {
            pos.add(&rows);
        } else {
            neg.add(&rows);
        }
    }
    let dropped_pairs = keep.iter().filter(|k| !**k).count() as u32;
    if pos.count == 0 {
        return Err(PersonaError::Input(format!(
            "no sample pair survived the response filter ({}); no vector",
            filter.describe()
        )));
    }
    let (mp, mn) = (pos.mean(), neg.mean());
    let rows: Vec<Vec<f32>> =
        mp.iter().zip(&mn).map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) as f32).collect()).collect();
    let mut meta = VectorMeta {
        model_hint: c.arch.name().into(),
        model_name: Some(backend.model_name().into()),
        n_layers: c.n_layers,
        d_model: d,
        ..Default::default()
    };
    meta.trait_name = Some(def.name.clone());
    meta.description = Some(def.description.clone());
    meta.mode = Some(opts.mode.name().into());
    meta.counts = Some([pos.count, neg.count]);
    meta.extra.insert("pairs".into(), pairs.to_string());
    meta.extra.insert("questions".into(), questions.to_string());
    if opts.mode == Mode::Response {
        meta.extra.insert("filter".into(), filter.describe());
        meta.extra.insert("rollouts".into(), rollouts.to_string());
        meta.extra.insert("max_tokens".into(), opts.max_tokens.to_string());
        meta.extra.insert(
            "sampling".into(),
            format!(
                "temperature {} top_p {} seed {}",
                opts.sampling.temperature, opts.sampling.top_p, opts.sampling.seed
            ),
        );
    }
    let vector = TraitVector { present: vec![true; rows.len()], rows, meta };
    Ok(Extraction { vector, kept: [pos.count, neg.count], dropped_pairs, responses })
}
