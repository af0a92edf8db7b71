//! Generation: prompt processing in one batch, then one token at a time, streaming text through a callback.

use crate::hooks::ResidualHook;
use crate::model::{KvCache, Logits, Model};
use crate::sample::{Sampler, SamplingParams};
use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    let stop_ids = model.tokenizer.stop_ids().to_vec();
    let mut context = prompt_ids.to_vec();
    let mut ids = Vec::new();
    let mut stream = model.tokenizer.stream();
    let mut text = String::new();
    let ctx = model.config.context_length;
    let stop = loop {
        if ids.len() >= max_tokens {
            break StopReason::MaxTokens;
        }
        let id = sampler.sample(&logits, &context);
        if stop_ids.contains(&id) {
            break StopReason::EndOfTurn;
        }
        ids.push(id);
        context.push(id);
        let piece = stream.push(id)?;
        text.push_str(&piece);
        let flow = on_token(TokenEvent { id, text: &piece, index: ids.len() - 1, logits: &logits });
        if flow == Flow::Stop {
            break StopReason::Cancelled;
        }
        if ids.len() >= max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() + 1 > ctx {
            break StopReason::ContextFull;
        }
        logits = model.forward(&mut cache, &[id], hook, Logits::Last)?;
    };
    text.push_str(&stream.finish());
    Ok(Generation { prompt_ids: prompt_ids.to_vec(), ids, text, stop })
}
