//! The one small interface the persona methods need from a model, implemented by the CPU reference
//! ([`CpuBackend`]) and the GPU engine ([`GpuBackend`]).
//!
//! Two operations cover extraction, evaluation, calibration and screening:
//! - [`Backend::pass`]: one forward pass over given tokens in a fresh sequence (optionally steered) that returns the
//!   residuals asked for (last token, a mean over a position range, every position of a range) and the
//!   log-probabilities of given tokens;
//! - [`Backend::generate`]: a reply, streamed token by token with projection scores, optionally steered.
//!
//! The methods are `async` because the GPU engine is (its readbacks cannot block in a browser); the CPU backend's
//! futures are ready at once. Native callers drive them with `pollster::block_on`.

use std::ops::Range;

use personascope_gpu::GpuModel;
use personascope_model::{
    ChatTemplate, Config, Flow, KvCache, Logits, Message, Model, ResidualHook, Sampler, SamplingParams, Steer,
    Steering, StopReason, Tokenizer,
};

use crate::error::{PersonaError, Result};

/// Rows `[N+1][d]`, one per residual index (0 = embeddings, k = output of block k-1).
pub type Layers = Vec<Vec<f32>>;

/// What one forward pass should return besides the last token's residuals.
#[derive(Debug, Clone, Default)]
pub struct Pass<'a> {
    pub tokens: &'a [u32],
    pub steer: &'a [Steering],
    /// Mean residual over these positions (clamped to the tokens), at every residual index.
    pub mean_over: Option<Range<usize>>,
    /// Residuals of every position in this range, at every residual index.
    pub capture: Option<Range<usize>>,
    /// `log p(tokens[t] | tokens[..t])` for t in this range (t >= 1).
    pub logprobs: Option<Range<usize>>,
}

#[derive(Debug, Clone, Default)]
pub struct PassOut {
    /// Residuals of the last token.
    pub last: Layers,
    /// Mean over `mean_over` (empty range: zeros).
    pub mean: Option<Layers>,
    /// `[position - capture.start][layer][d]`.
    pub captured: Vec<Layers>,
    pub logprobs: Vec<f32>,
}

/// A generated reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Projection scores `[token][trait][residual index]` of every generated token (empty without monitoring).
    pub scores: Vec<Vec<Vec<f32>>>,
    /// The pre-generation reading: scores `[trait][residual index]` of the last prompt token, from the prompt's own
    /// pass under the same steering (empty without monitoring).
    pub prompt_scores: Vec<Vec<f32>>,
}

/// Unit directions `[trait][residual index]` (None: not monitored there), as the engines take them.
pub type Monitor = [Vec<Option<Vec<f32>>>];

/// Streaming callback: token id, its text, its scores `[trait][residual index]`.
pub type OnToken<'a> = dyn FnMut(u32, &str, &[Vec<f32>]) -> Flow + 'a;

/// What the persona methods need from a model.
#[allow(async_fn_in_trait)]
pub trait Backend {
    fn config(&self) -> &Config;
    fn tokenizer(&self) -> &Tokenizer;
    fn template(&self) -> &ChatTemplate;
    /// `general.name` of the model.
    fn model_name(&self) -> &str;
    /// Longest sequence a pass or a generation may reach.
    fn max_positions(&self) -> usize;

    async fn pass(&mut self, pass: &Pass<'_>) -> Result<PassOut>;

    /// A reply to `prompt` (a rendered chat prompt) from a fresh sequence.
    async fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        params: &SamplingParams,
        steer: &[Steering],
        monitor: &Monitor,
        on_token: &mut OnToken<'_>,
    ) -> Result<Reply>;

    /// Token ids of a chat prompt (with the generation prompt), special-token text in contents kept as text.
    fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<Vec<u32>> {
        self.prompt_of(&messages(system, user))
    }

    fn prompt_of(&self, messages: &[Message]) -> Result<Vec<u32>> {
        Ok(self.template().encode_prompt(self.tokenizer(), messages)?)
    }
}

/// `[system?, user]`.
pub fn messages(system: Option<&str>, user: &str) -> Vec<Message> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(Message { role: "system".into(), content: s.into() });
    }
    m.push(Message { role: "user".into(), content: user.into() });
    m
}

fn check_pass(pass: &Pass<'_>, max: usize) -> Result<()> {
    let n = pass.tokens.len();
    if n == 0 {
        return Err(PersonaError::Input("a forward pass needs at least one token".into()));
    }
    if n > max {
        return Err(PersonaError::Input(format!("{n} tokens do not fit the model's {max} positions")));
    }
    if let Some(r) = &pass.logprobs {
        if r.start == 0 || r.end > n {
            return Err(PersonaError::Input(format!("log-probabilities asked for positions {r:?} of {n} tokens")));
        }
    }
    Ok(())
}

/// `log softmax(logits)[id]`, in f64 for the sum.
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let l = logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
    ((l - max) as f64 - sum.ln()) as f32
}

/// Records what a [`Pass`] asks for, on the CPU.
struct Recorder {
    d: usize,
    n: usize,
    last: Layers,
    mean_over: Option<Range<usize>>,
    sums: Vec<Vec<f64>>,
    capture: Option<Range<usize>>,
    captured: Vec<Layers>,
}

impl ResidualHook for Recorder {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        for (i, row) in h.chunks_exact(d).enumerate() {
            let pos = pos0 + i;
            if pos + 1 == self.n {
                self.last[layer] = row.to_vec();
            }
            if self.mean_over.as_ref().is_some_and(|r| r.contains(&pos)) {
                for (s, &x) in self.sums[layer].iter_mut().zip(row) {
                    *s += x as f64;
                }
            }
            if let Some(r) = &self.capture {
                if r.contains(&pos) {
                    self.captured[pos - r.start][layer] = row.to_vec();
                }
            }
        }
        debug_assert_eq!(d, self.d);
    }
}

fn mean_of(sums: &[Vec<f64>], range: &Range<usize>, n: usize) -> Layers {
    let count = range.end.min(n).saturating_sub(range.start);
    sums.iter().map(|s| s.iter().map(|&x| if count == 0 { 0.0 } else { (x / count as f64) as f32 }).collect()).collect()
}

/// The CPU reference model as a backend.
pub struct CpuBackend<'m> {
    pub model: &'m Model,
    /// The last pass's tokens and KV cache, for reusing a shared prefix (see [`reusable_prefix`]).
    prev: Option<(Vec<u32>, KvCache, usize)>,
}

impl<'m> CpuBackend<'m> {
    pub fn new(model: &'m Model) -> Self {
        CpuBackend { model, prev: None }
    }
}

/// First position whose residuals, logits or steering a pass needs: the positions before it can come from the
/// KV cache of an earlier pass over the same tokens. Eval and screening run many passes that share their prompt
/// (one per answer, alpha and layer), so this skips most of the prompt.
fn first_needed(pass: &Pass<'_>) -> usize {
    let n = pass.tokens.len();
    let starts = [
        pass.mean_over.as_ref().map(|r| r.start),
        pass.capture.as_ref().map(|r| r.start),
        pass.logprobs.as_ref().map(|r| r.start.saturating_sub(1)),
    ];
    let steer = pass.steer.iter().map(|s| s.positions.start);
    starts.into_iter().flatten().chain(steer).fold(n - 1, usize::min)
}

/// How many leading positions of `pass` can be taken from a previous pass over `prev` whose first `prev_clean`
/// positions were computed without steering: the common prefix, up to what this pass needs recomputed.
fn reusable_prefix(prev: &[u32], prev_clean: usize, pass: &Pass<'_>) -> usize {
    let common = prev.iter().zip(pass.tokens).take_while(|(a, b)| a == b).count();
    common.min(prev_clean).min(first_needed(pass))
}

impl Backend for CpuBackend<'_> {
    fn config(&self) -> &Config {
        &self.model.config
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }
    fn template(&self) -> &ChatTemplate {
        &self.model.template
    }
    fn model_name(&self) -> &str {
        &self.model.name
    }
    fn max_positions(&self) -> usize {
        self.model.config.context_length
    }

    async fn pass(&mut self, pass: &Pass<'_>) -> Result<PassOut> {
        check_pass(pass, self.max_positions())?;
        let c = &self.model.config;
        let (n, d, layers) = (pass.tokens.len(), c.d_model, c.n_layers + 1);
        let capture = pass.capture.clone().map(|r| r.start.min(n)..r.end.min(n));
        let mut rec = Recorder {
            d,
            n,
            last: vec![Vec::new(); layers],
            mean_over: pass.mean_over.clone(),
            sums: vec![vec![0.0; d]; layers],
            capture: capture.clone(),
            captured: vec![vec![Vec::new(); layers]; capture.as_ref().map_or(0, |r| r.len())],
        };
        let mut steer = Steer(pass.steer.to_vec());
        // Positions before `reuse` come from the previous pass's cache; hooks see only the rest, which holds every
        // position this pass reads or steers (first_needed).
        let (reuse, mut cache) = match self.prev.take() {
            Some((toks, mut cache, clean)) => {
                let r = reusable_prefix(&toks, clean, pass);
                cache.truncate(r, c.kv_dim());
                (r, cache)
            }
            None => (0, KvCache::default()),
        };
        let want = match &pass.logprobs {
            Some(r) => Logits::From(r.start - 1 - reuse),
            None => Logits::Last,
        };
        let logits = self.model.forward(&mut cache, &pass.tokens[reuse..], &mut (&mut steer, &mut rec), want)?;
        let clean = pass.steer.iter().map(|s| s.positions.start).fold(n, usize::min);
        self.prev = Some((pass.tokens.to_vec(), cache, clean));
        let mut logprobs = Vec::new();
        if let Some(r) = &pass.logprobs {
            let vocab = c.vocab_size;
            for t in r.clone() {
                let row = t - r.start;
                let l = logits
                    .get(row * vocab..(row + 1) * vocab)
                    .ok_or_else(|| PersonaError::Input(format!("no logits for position {t} of {n} tokens")))?;
                logprobs.push(log_prob(l, pass.tokens[t]));
            }
        }
        let mean = pass.mean_over.as_ref().map(|r| mean_of(&rec.sums, r, n));
        Ok(PassOut { last: rec.last, mean, captured: rec.captured, logprobs })
    }

    async fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        params: &SamplingParams,
        steer: &[Steering],
        monitor: &Monitor,
        on_token: &mut OnToken<'_>,
    ) -> Result<Reply> {
        if prompt.is_empty() {
            return Err(PersonaError::Input("generation needs a non-empty prompt".into()));
        }
        let model = self.model;
        let mut sampler = Sampler::new(params.clone())?;
        let mut steer = Steer(steer.to_vec());
        // From the last prompt token on: the prompt pass then yields the pre-generation reading.
        let mut proj = personascope_model::Projection::new(monitor.to_vec(), prompt.len() - 1..usize::MAX);
        let mut cache = KvCache::default();
        let mut logits = model.forward(&mut cache, prompt, &mut (&mut steer, &mut proj), Logits::Last)?;
        let prompt_scores = proj.scores.pop().map(|(_, s)| s).unwrap_or_default();
        let stop_ids = model.tokenizer.stop_ids().to_vec();
        let mut context = prompt.to_vec();
        let (mut ids, mut text, mut scores) = (Vec::new(), String::new(), Vec::new());
        let mut stream = model.tokenizer.stream();
        let ctx = model.config.context_length;
        // Each token is run through the model before it is handed out, so its scores come with it (as on the GPU).
        let stop = loop {
            if ids.len() >= max_tokens {
                break StopReason::MaxTokens;
            }
            if cache.len() + 1 > ctx {
                break StopReason::ContextFull;
            }
            let id = sampler.sample(&logits, &context);
            if stop_ids.contains(&id) {
                break StopReason::EndOfTurn;
            }
            proj.scores.clear();
            logits = model.forward(&mut cache, &[id], &mut (&mut steer, &mut proj), Logits::Last)?;
            let s = proj.scores.pop().map(|(_, s)| s).unwrap_or_default();
            ids.push(id);
            context.push(id);
            let piece = stream.push(id)?;
            text.push_str(&piece);
            let flow = on_token(id, &piece, &s);
            scores.push(s);
            if flow == Flow::Stop {
                break StopReason::Cancelled;
            }
        };
        text.push_str(&stream.finish());
        Ok(Reply { ids, text, stop, scores, prompt_scores })
    }
}

/// The GPU engine as a backend.
pub struct GpuBackend<'m> {
    pub model: &'m mut GpuModel,
}

impl<'m> GpuBackend<'m> {
    pub fn new(model: &'m mut GpuModel) -> Self {
        GpuBackend { model }
    }
}

impl Backend for GpuBackend<'_> {
    fn config(&self) -> &Config {
        &self.model.config
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }
    fn template(&self) -> &ChatTemplate {
        &self.model.template
    }
    fn model_name(&self) -> &str {
        &self.model.name
    }
    fn max_positions(&self) -> usize {
        self.model.options.max_positions
    }

    async fn pass(&mut self, pass: &Pass<'_>) -> Result<PassOut> {
        check_pass(pass, self.max_positions())?;
        let g = &mut *self.model;
        let n = pass.tokens.len();
        g.reset();
        g.set_steering(&Steer(pass.steer.to_vec()))?;
        g.set_sum_range(pass.mean_over.clone());
        let capture = pass.capture.clone().map(|r| r.start.min(n)..r.end.min(n)).filter(|r| !r.is_empty());
        // The engine keeps the last token's residuals and logits only, so positions whose residuals or next-token
        // logits are wanted are fed one at a time after a batched prefix.
        let first_single = [capture.as_ref().map(|r| r.start), pass.logprobs.as_ref().map(|r| r.start - 1)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(n - 1)
            .min(n - 1);
        let mut out = PassOut::default();
        let result: Result<()> = async {
            if first_single > 0 {
                g.prefill(&pass.tokens[..first_single]).await?;
            }
            for t in first_single..n {
                g.prefill(&pass.tokens[t..t + 1]).await?;
                if capture.as_ref().is_some_and(|r| r.contains(&t)) {
                    out.captured.push(g.read_residuals().await?);
                }
                if let Some(r) = &pass.logprobs {
                    if r.contains(&(t + 1)) {
                        out.logprobs.push(log_prob(&g.read_logits().await?, pass.tokens[t + 1]));
                    }
                }
            }
            out.last = g.read_residuals().await?;
            if let Some(r) = &pass.mean_over {
                let count = r.end.min(n).saturating_sub(r.start);
                let sums = g.read_sums().await?;
                out.mean = Some(
                    sums.into_iter()
                        .map(|row| row.into_iter().map(|x| if count == 0 { 0.0 } else { x / count as f32 }).collect())
                        .collect(),
                );
            }
            Ok(())
        }
        .await;
        // Leave the engine plain for whoever uses it next, whatever happened.
        g.set_sum_range(None);
        let cleared = g.set_steering(&Steer::default());
        result?;
        cleared?;
        Ok(out)
    }

    async fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        params: &SamplingParams,
        steer: &[Steering],
        monitor: &Monitor,
        on_token: &mut OnToken<'_>,
    ) -> Result<Reply> {
        let g = &mut *self.model;
        g.set_steering(&Steer(steer.to_vec()))?;
        g.set_monitor(monitor)?;
        let result = g.generate(prompt, max_tokens, params, on_token).await;
        g.set_monitor(&[])?;
        g.set_steering(&Steer::default())?;
        let r = result?;
        Ok(Reply { ids: r.ids, text: r.text, stop: r.stop, scores: r.scores, prompt_scores: r.prompt_scores })
    }
}
