//! The persona methods run on any [`Engine`] (the CPU reference, [`CpuEngine`], or the GPU engine, `GpuModel`):
//! each method describes its forward passes and generations as [`Plan`]s and hands them over all at once, and the
//! scheduler runs them as ragged batches with shared prefixes (`personascope_model::schedule`).
//!
//! The methods are `async` because the GPU engine is (its readbacks cannot block in a browser); the CPU engine's
//! futures are ready at once. Native callers drive them with `pollster::block_on`.

use std::cell::RefCell;
use std::sync::Arc;

use personascope_gpu::GpuModel;
use personascope_model::schedule::{self, GenOut, GenSpec, PassSpec, Passes, Progress, TokenEvent};
use personascope_model::{CpuEngine, Engine, Flow, Message, Units};

use crate::error::{PersonaError, Result};

pub use personascope_model::plan::{Layers, Plan, PlanOut, Span};

/// An engine the persona methods can use.
#[allow(async_fn_in_trait)]
pub trait Backend: Engine {
    /// The engine's error as a persona error.
    fn lift(e: Self::Error) -> PersonaError;

    /// Token ids of a chat prompt (with the generation prompt), special-token text in contents kept as text.
    fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<Vec<u32>> {
        self.prompt_of(&messages(system, user))
    }

    fn prompt_of(&self, messages: &[Message]) -> Result<Vec<u32>> {
        Ok(self.template().encode_prompt(self.tokenizer(), messages)?)
    }
}

impl Backend for CpuEngine<'_> {
    fn lift(e: personascope_model::ModelError) -> PersonaError {
        e.into()
    }
}

impl Backend for GpuModel {
    fn lift(e: personascope_gpu::GpuError) -> PersonaError {
        e.into()
    }
}

impl<B: Backend> Backend for &mut B {
    fn lift(e: B::Error) -> PersonaError {
        B::lift(e)
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

/// Runs `passes` in batches; `progress(done, total)` after each batch, `Flow::Stop` cancels (the result then says
/// so and holds the passes run).
pub async fn passes<B: Backend>(
    b: &mut B,
    passes: &[PassSpec],
    monitor: Option<Arc<Units>>,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Passes> {
    schedule::run_passes(b, passes, monitor, progress).await.map_err(B::lift)
}

/// [`passes`] where a cancel is an error and every pass has its result.
pub async fn all_passes<B: Backend>(
    b: &mut B,
    specs: &[PassSpec],
    monitor: Option<Arc<Units>>,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Vec<PlanOut>> {
    let out = passes(b, specs, monitor, progress).await?;
    if out.cancelled {
        return Err(PersonaError::Cancelled);
    }
    out.outs.into_iter().map(|o| o.ok_or(PersonaError::Cancelled)).collect()
}

/// Generates every reply in batches; `on_token` streams tokens (`Flow::Stop` ends that reply), `progress` runs
/// after each batch (`Flow::Stop` leaves the replies not started `Cancelled`).
pub async fn generate<B: Backend>(
    b: &mut B,
    specs: &[GenSpec],
    monitor: Option<Arc<Units>>,
    on_token: &mut dyn FnMut(TokenEvent<'_>) -> Flow,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Vec<GenOut>> {
    schedule::generate_many(b, specs, monitor, on_token, progress).await.map_err(B::lift)
}

/// Generated tokens between two polls of [`generate_polled`]'s `progress`.
pub const POLL_TOKENS: usize = 32;

/// [`generate`] without streaming, for batch jobs: `progress` runs after each batch and also every
/// [`POLL_TOKENS`] generated tokens (with the progress last reported), so that a cancel lands within a decode
/// step or two instead of at the end of a batch (minutes on a software GPU). `Flow::Stop` ends every running reply
/// (`StopReason::Cancelled`) and starts no other.
pub async fn generate_polled<B: Backend>(
    b: &mut B,
    specs: &[GenSpec],
    monitor: Option<Arc<Units>>,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Vec<GenOut>> {
    struct Poll<'a> {
        progress: &'a mut dyn FnMut(Progress) -> Flow,
        last: Progress,
        tokens: usize,
        stop: bool,
    }
    // The scheduler calls the two callbacks one at a time, never one inside the other.
    let poll = RefCell::new(Poll { progress, last: Progress { done: 0, total: specs.len() }, tokens: 0, stop: false });
    let flow = |stop: bool| if stop { Flow::Stop } else { Flow::Continue };
    let mut on_token = |_: TokenEvent<'_>| {
        let mut p = poll.borrow_mut();
        p.tokens += 1;
        if !p.stop && p.tokens.is_multiple_of(POLL_TOKENS) {
            let last = p.last;
            p.stop = (p.progress)(last) == Flow::Stop;
        }
        flow(p.stop)
    };
    let mut on_batch = |now: Progress| {
        let mut p = poll.borrow_mut();
        p.last = now;
        if !p.stop {
            p.stop = (p.progress)(now) == Flow::Stop;
        }
        flow(p.stop)
    };
    generate(b, specs, monitor, &mut on_token, &mut on_batch).await
}

/// The residual rows `[N+1][d]` of the last token of `tokens`, one pass each (e.g. prompt-last readings).
pub fn last_token_plan(len: usize, n_layers: usize) -> Plan {
    Plan { capture: Some(Span::all_layers(len.saturating_sub(1)..len, n_layers)), ..Default::default() }
}

/// The captured rows of the last position of a [`last_token_plan`] pass.
pub fn last_rows(out: &PlanOut) -> Result<&Layers> {
    out.captured.last().map(|(_, r)| r).ok_or_else(|| PersonaError::Input("a pass returned no residuals".into()))
}
