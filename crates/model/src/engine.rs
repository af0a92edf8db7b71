//! What an engine (the CPU reference, the GPU) offers the scheduler: a *wave* of sequences processed together
//! in ragged batches, each sequence with its own positions, KV rows and [`Plan`], optionally continuing the
//! KV cache of another sequence of the wave (a shared prefix), and batched decode steps for the sequences that
//! generate. The scheduler ([`crate::schedule`]) groups passes and generations into waves; engines only execute.

use std::sync::Arc;

use crate::plan::{Plan, PlanOut, Units};
use crate::{ChatTemplate, Config, SamplingParams, Tokenizer};

/// One sequence of a wave.
#[derive(Debug, Clone)]
pub struct WaveSeq {
    /// `(index, len)`: this sequence's first `len` positions are those of an earlier sequence of the wave, whose KV
    /// cache it reads instead of recomputing them. The plan must not touch positions before `len`.
    pub prefix: Option<(usize, usize)>,
    /// This sequence's own tokens, at positions `start()..`.
    pub tokens: Vec<u32>,
    pub plan: Plan,
    /// For a generating sequence: how it samples and how many tokens it may add (KV rows are kept for them).
    pub generate: Option<(SamplingParams, usize)>,
}

impl WaveSeq {
    /// Position of the first own token.
    pub fn start(&self) -> usize {
        self.prefix.map_or(0, |(_, len)| len)
    }

    /// Positions the sequence holds once its own tokens are in.
    pub fn len(&self) -> usize {
        self.start() + self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// KV rows the sequence needs of its own (own tokens and generated ones).
    pub fn kv_rows(&self) -> usize {
        self.tokens.len() + self.generate.as_ref().map_or(0, |(_, n)| *n)
    }
}

/// Sequences processed together, and the trait directions their plans project onto.
#[derive(Debug, Clone, Default)]
pub struct Wave {
    pub seqs: Vec<WaveSeq>,
    pub monitor: Option<Arc<Units>>,
}

/// How much one wave may hold (the scheduler keeps within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// KV rows of all sequences of a wave together.
    pub kv_rows: usize,
    /// Sequences in a wave.
    pub seqs: usize,
    /// Generating sequences in a wave (they decode together).
    pub gen_seqs: usize,
    /// f32 values of captures, means, projections and log-probabilities a wave may return.
    pub out_floats: usize,
    /// Trait directions a monitor may hold.
    pub traits: usize,
}

/// What a decode step returns for one sequence: the token sampled and the projections of its residuals once
/// fed (`[trait][residual index]`, empty without a monitor or outside the plan's projection range).
#[derive(Debug, Clone, PartialEq)]
pub struct StepToken {
    pub seq: usize,
    pub token: u32,
    pub scores: Vec<Vec<f32>>,
}

/// The f32 values a sequence's plan returns, for a model of `layers` residual indices, width `d`, `traits`
/// monitored traits.
pub fn out_floats(s: &WaveSeq, layers: usize, d: usize, traits: usize) -> usize {
    let own = s.start()..s.len();
    let overlap = |r: &std::ops::Range<usize>| r.end.min(own.end).saturating_sub(r.start.max(own.start));
    let p = &s.plan;
    let capture = p.capture.as_ref().map_or(0, |c| overlap(&c.positions) * distinct(&c.layers).len() * d);
    let mean = p.mean.as_ref().map_or(0, |m| distinct(&m.layers).len() * d);
    let gen = s.generate.as_ref().map_or(0, |(_, n)| *n);
    let project = p.project.as_ref().map_or(0, |r| (overlap(r) + gen) * traits * layers);
    let logprobs = p.logprobs.as_ref().map_or(0, overlap);
    capture + mean + project + logprobs
}

/// `layers` sorted, without duplicates (the order results are laid out in).
pub fn distinct(layers: &[usize]) -> Vec<usize> {
    let mut l = layers.to_vec();
    l.sort_unstable();
    l.dedup();
    l
}

/// Blocks a wave runs: all of them when a sequence generates or needs log-probabilities; otherwise only as many
/// as the deepest residual index a plan reads (a projection reads every index where the monitor has a direction).
pub fn wave_blocks(wave: &Wave, n_layers: usize) -> usize {
    let monitor_deepest = wave
        .monitor
        .as_ref()
        .and_then(|m| m.iter().filter_map(|per_layer| per_layer.iter().rposition(Option::is_some)).max());
    let mut deepest = 0;
    for s in &wave.seqs {
        if s.generate.is_some() || s.plan.needs_head() {
            return n_layers;
        }
        deepest = deepest.max(s.plan.deepest_read().unwrap_or(0));
        if s.plan.project.as_ref().is_some_and(|r| !r.is_empty()) {
            deepest = deepest.max(monitor_deepest.unwrap_or(0));
        }
    }
    deepest.min(n_layers)
}

/// An engine that runs waves.
#[allow(async_fn_in_trait)]
pub trait Engine {
    type Error: From<crate::ModelError> + std::fmt::Display;

    fn config(&self) -> &Config;
    fn tokenizer(&self) -> &Tokenizer;
    fn template(&self) -> &ChatTemplate;
    /// `general.name` of the model.
    fn model_name(&self) -> &str;
    /// Longest sequence a pass or a generation may reach.
    fn max_positions(&self) -> usize;
    fn limits(&self) -> Limits;

    /// Starts `wave` (the previous wave's KV cache is forgotten) and processes every own token of every sequence,
    /// in wave order. Returns each sequence's plan results for its tokens; generating sequences keep their last
    /// row's logits for the first step.
    async fn prefill(&mut self, wave: &Wave) -> Result<Vec<PlanOut>, Self::Error>;

    /// Submits one decode step for the generating sequences `active` (wave indices): each samples a token from its
    /// latest logits (its `step`-th: seeds the step's randomness), feeds it, and keeps the new logits. An engine may
    /// run it asynchronously; results come back in submission order from [`Engine::finish_step`].
    fn submit_step(&mut self, active: &[usize], step: u32) -> Result<(), Self::Error>;

    /// The oldest submitted step's tokens, one per active sequence, in the order they were given.
    async fn finish_step(&mut self) -> Result<Vec<StepToken>, Self::Error>;

    /// Submits and dispatches recorded since the engine was made: (submits, dispatches). Engines without a queue
    /// report (0, 0).
    fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// An engine borrowed mutably is an engine (callers that hold `&mut GpuModel` pass it on).
impl<E: Engine> Engine for &mut E {
    type Error = E::Error;

    fn config(&self) -> &Config {
        (**self).config()
    }
    fn tokenizer(&self) -> &Tokenizer {
        (**self).tokenizer()
    }
    fn template(&self) -> &ChatTemplate {
        (**self).template()
    }
    fn model_name(&self) -> &str {
        (**self).model_name()
    }
    fn max_positions(&self) -> usize {
        (**self).max_positions()
    }
    fn limits(&self) -> Limits {
        (**self).limits()
    }
    async fn prefill(&mut self, wave: &Wave) -> Result<Vec<PlanOut>, Self::Error> {
        (**self).prefill(wave).await
    }
    fn submit_step(&mut self, active: &[usize], step: u32) -> Result<(), Self::Error> {
        (**self).submit_step(active, step)
    }
    async fn finish_step(&mut self) -> Result<Vec<StepToken>, Self::Error> {
        (**self).finish_step().await
    }
    fn counters(&self) -> (u64, u64) {
        (**self).counters()
    }
}
