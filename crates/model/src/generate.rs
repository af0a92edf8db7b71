//! Generation: prompt processing in one batch, then one token at a time, streaming text through a callback.

use crate::hooks::ResidualHook;
use crate::model::{KvCache, Logits, Model};
use crate::reply::{Accepted, ReplyState};
use crate::sample::{Sampler, SamplingParams};
use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-turn or end-of-text token (not included in the output).
    EndOfTurn,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Generated tokens, without the stop token.
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
}

/// What the streaming callback receives for each generated token.
pub struct TokenEvent<'a> {
    pub id: u32,
    /// The text this token completes (may be empty while a multi-byte character is split across tokens).
    pub text: &'a str,
    /// 0-based index of the generated token.
    pub index: usize,
    /// The logits the token was sampled from.
    pub logits: &'a [f32],
}

/// Whether generation goes on after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Generates a reply to `prompt_ids` (a rendered chat prompt) in a fresh cache. `hook` sees every residual of
/// the prompt and of each generated token (steering, capture). Stops at an end-of-turn token, `max_tokens`, the
/// context limit, or when `on_token` returns [`Flow::Stop`].
pub fn generate(
    model: &Model,
    prompt_ids: &[u32],
    max_tokens: usize,
    params: SamplingParams,
    hook: &mut dyn ResidualHook,
    on_token: &mut dyn FnMut(TokenEvent<'_>) -> Flow,
) -> Result<Generation> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Config("generation needs a non-empty prompt".into()));
    }
    let mut sampler = Sampler::new(params)?;
    let mut cache: KvCache = model.new_cache();
    let mut logits = model.forward(&mut cache, prompt_ids, hook, Logits::Last)?;
    let mut context = prompt_ids.to_vec();
    let mut reply = ReplyState::new(&model.tokenizer, prompt_ids.len(), max_tokens, model.config.context_length);
    while reply.running() {
        let id = sampler.sample(&logits, &context);
        let Accepted::Token(piece) = reply.accept(&model.tokenizer, id, Vec::new())? else { break };
        context.push(id);
        let flow = on_token(TokenEvent { id, text: &piece, index: reply.ids.len() - 1, logits: &logits });
        reply.after_callback(flow == Flow::Stop);
        if reply.running() {
            logits = model.forward(&mut cache, &[id], hook, Logits::Last)?;
        }
    }
    let stop = reply.stop.unwrap_or(StopReason::MaxTokens);
    let text = reply.finish();
    Ok(Generation { prompt_ids: prompt_ids.to_vec(), ids: reply.ids, text, stop })
}
