//! Dataset screening (docs/method.md §7): for each sample, how far its response pushes the residual
//! stream along the trait direction.
//!
//! - **projection difference** (default): `r(x, y) . v_hat - r(x, y') . v_hat`, where r is the mean residual over
//!   the response tokens at the screening layer, y the dataset response and y' the model's own (greedy) response to
//!   the same prompt;
//! - **cheap**: the raw projection `r(x, y) . v_hat` alone (no generation; about 15x faster).

use personascope_model::{Flow, Message, SamplingParams};

use crate::backend::{self, Backend, Plan, Span};
use crate::dataset::Sample;
use crate::error::{PersonaError, Result};
use crate::stats;
use crate::vector_file::TraitVector;
use personascope_model::schedule::{self, GenSpec, PassSpec};

#[derive(Debug, Clone)]
pub struct ScreenOptions {
    /// Residual index read; None: the vector's screening layer, else its recommended layer.
    pub layer: Option<usize>,
    pub cheap: bool,
    /// Longest own response generated per sample (projection difference). The default is the length of the
    /// calibration's own answers, so that a score is read against a null measured the same way.
    pub max_tokens: usize,
    /// Samples per batch job: progress and cancellation come after each.
    pub chunk: usize,
}

impl Default for ScreenOptions {
    fn default() -> Self {
        ScreenOptions { layer: None, cheap: false, max_tokens: crate::monitor::CALIBRATION_TOKENS, chunk: 32 }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleScore {
    /// 1-based line number of the sample in the dataset file.
    pub line: usize,
    /// The ranking score: the projection difference, or the raw projection in cheap mode.
    pub score: f32,
    /// Mean projection of the dataset response.
    pub projection: f32,
    /// Mean projection of the model's own response (projection-difference mode).
    pub own_projection: Option<f32>,
    /// `score` in units of the neutral response-average spread (calibration), when the vector has one.
    pub z: Option<f32>,
    pub response_tokens: usize,
    /// The model's own response (projection-difference mode).
    pub own_response: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Screening {
    pub layer: usize,
    pub method: &'static str,
    /// In input order; only the samples screened before a cancel.
    pub scores: Vec<SampleScore>,
    /// Samples that could not be screened (line, reason), e.g. longer than the model's context.
    pub skipped: Vec<(usize, String)>,
    pub cancelled: bool,
    /// What a neutral sample scores (from the vector's calibration), which `z` is measured against.
    pub null: Option<Null>,
}

/// The distribution of a neutral sample's score at the screening layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Null {
    pub mean: f32,
    pub std: f32,
    /// Neutral items it was measured on.
    pub samples: u32,
    /// Which neutral scores: "written neutral answers" (cheap) or "written minus own neutral answers".
    pub of: &'static str,
}

impl Null {
    /// The share of neutral samples expected to score at least `score` (normal approximation).
    pub fn false_positive_rate(&self, score: f32) -> f32 {
        crate::monitor::normal_tail((score - self.mean) / self.std)
    }
}

/// The null of the chosen method at `layer`, when the vector is calibrated. Cheap scores are read against the
/// written neutral answers; differences against written minus own answers (older calibrations without those
/// statistics fall back to zero and the spread of the neutral answer means).
pub fn null_of(vector: &TraitVector, layer: usize, cheap: bool) -> Option<Null> {
    let cal = vector.meta.calibration.as_ref()?;
    let ok = |s: f32| s > 0.0 && s.is_finite();
    let (mean, std, of) = if cheap {
        (*cal.response_mean.get(layer)?, *cal.response_std.get(layer)?, "written neutral answers")
    } else {
        match (cal.difference_mean.get(layer), cal.difference_std.get(layer)) {
            (Some(&m), Some(&s)) if ok(s) => (m, s, "written minus own neutral answers"),
            _ => (0.0, *cal.response_std.get(layer)?, "written neutral answers (spread only)"),
        }
    };
    ok(std).then_some(Null { mean, std, samples: cal.samples, of })
}

impl Screening {
    /// The dataset-level figure: the mean score (the paper's Delta P in projection-difference mode).
    pub fn dataset_score(&self) -> f32 {
        stats::mean(&self.scores.iter().map(|s| s.score).collect::<Vec<_>>())
    }

    /// Scores ranked, highest (most trait-inducing) first.
    pub fn ranked(&self) -> Vec<&SampleScore> {
        let mut r: Vec<&SampleScore> = self.scores.iter().collect();
        r.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.line.cmp(&b.line)));
        r
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

fn to_messages(s: &Sample) -> Vec<Message> {
    s.prompt.iter().map(|m| Message { role: m.role.as_str().into(), content: m.content.clone() }).collect()
}

/// The screening layer of a vector: its own screening layer, else its recommended layer.
pub fn default_layer(vector: &TraitVector) -> Option<usize> {
    vector.meta.screen_layer.or(vector.meta.layer)
}

/// Screens `samples`. Per chunk of samples, one batch job generates the model's own greedy answers (projection
/// difference; their projections come with the tokens, so they are never re-run) and one scores the dataset
/// responses. `progress` runs as batches finish; returning `Flow::Stop` ends the run after the current chunk and
/// keeps the scores computed so far (`cancelled` is then set).
pub async fn screen<B: Backend>(
    backend: &mut B,
    vector: &TraitVector,
    samples: &[Sample],
    opts: &ScreenOptions,
    progress: &mut dyn FnMut(Progress) -> Flow,
) -> Result<Screening> {
    let c = backend.config().clone();
    vector.check_model(c.arch.name(), Some(backend.model_name()), c.n_layers, c.d_model)?;
    let layer = opts.layer.or_else(|| default_layer(vector)).ok_or_else(|| {
        PersonaError::Input("no screening layer given and the vector file recommends none (run eval first)".into())
    })?;
    let row = vector
        .rows
        .get(layer)
        .ok_or_else(|| PersonaError::Input(format!("layer {layer} out of range (0..={})", c.n_layers)))?;
    let unit = stats::unit(row)
        .ok_or_else(|| PersonaError::Input(format!("the vector is zero at layer {layer}; pick another layer")))?;
    let null = null_of(vector, layer, opts.cheap);
    let z_of = |score: f32| -> Option<f32> { null.map(|n| (score - n.mean) / n.std) };
    let monitor =
        personascope_model::plan::units(&[(0..=c.n_layers).map(|l| (l == layer).then(|| row.clone())).collect()]);
    let max = backend.max_positions();
    let mut scores = Vec::with_capacity(samples.len());
    let mut skipped = Vec::new();
    let mut cancelled = false;
    let total = samples.len();
    // Tokenized samples that fit: (sample, prompt, prompt + response).
    let mut ready: Vec<(&Sample, Vec<u32>, Vec<u32>)> = Vec::with_capacity(samples.len());
    for s in samples {
        let prompt = backend.prompt_of(&to_messages(s))?;
        let response = backend.tokenizer().encode(&s.response)?;
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&response);
        // Room for the model's own answer too, in projection-difference mode.
        let needed = if opts.cheap { tokens.len() } else { tokens.len().max(prompt.len() + opts.max_tokens) };
        if needed > max || response.is_empty() {
            let why = if response.is_empty() {
                "the response is empty".to_string()
            } else {
                format!("{needed} tokens needed; the model takes {max}")
            };
            skipped.push((s.line, why));
            continue;
        }
        ready.push((s, prompt, tokens));
    }
    let mut done = skipped.len();
    for chunk in ready.chunks(opts.chunk.max(1)) {
        let halves = if opts.cheap { 1 } else { 2 };
        let mut report = |base: usize, p: schedule::Progress| {
            let part = (base + p.done) * chunk.len() / (halves * p.total.max(1));
            progress(Progress { done: (done + part).min(total), total })
        };
        let own: Vec<Option<(f32, String)>> = if opts.cheap {
            vec![None; chunk.len()]
        } else {
            let specs: Vec<GenSpec> = chunk
                .iter()
                .map(|(_, prompt, _)| GenSpec {
                    prompt: prompt.clone(),
                    max_tokens: opts.max_tokens,
                    sampling: SamplingParams::greedy(),
                    plan: Plan { project: Some(prompt.len()..usize::MAX), ..Default::default() },
                })
                .collect();
            let replies =
                backend::generate_polled(backend, &specs, Some(monitor.clone()), &mut |p| report(0, p)).await?;
            if replies.iter().any(|r| r.stop == personascope_model::StopReason::Cancelled) {
                cancelled = true;
                break;
            }
            replies
                .into_iter()
                .map(|r| {
                    let proj: Vec<f32> = r.scores.iter().filter_map(|s| s.first()?.get(layer).copied()).collect();
                    let mean = if proj.is_empty() { f32::NAN } else { stats::mean(&proj) };
                    Some((mean, r.text))
                })
                .collect()
        };
        let specs: Vec<PassSpec> = chunk
            .iter()
            .map(|(_, prompt, tokens)| PassSpec {
                tokens: tokens.clone(),
                plan: Plan {
                    mean: Some(Span { positions: prompt.len()..tokens.len(), layers: vec![layer] }),
                    ..Default::default()
                },
            })
            .collect();
        let base = if opts.cheap { 0 } else { chunk.len() };
        let outs =
            backend::passes(backend, &specs, None, &mut |p| report(base * p.total.max(1) / chunk.len().max(1), p))
                .await?;
        for (((s, prompt, tokens), out), own) in chunk.iter().zip(outs.outs).zip(own) {
            let Some(out) = out else { continue };
            let projection = out.mean.as_ref().and_then(|m| m.get(layer)).map_or(f32::NAN, |h| stats::dot(h, &unit));
            let (own_projection, own_response) = match own {
                Some((p, text)) => (Some(p), Some(text)),
                None => (None, None),
            };
            let score = match own_projection {
                Some(o) => projection - o,
                None => projection,
            };
            scores.push(SampleScore {
                line: s.line,
                score,
                projection,
                own_projection,
                z: z_of(score),
                response_tokens: tokens.len() - prompt.len(),
                own_response,
            });
        }
        done += chunk.len();
        if outs.cancelled || progress(Progress { done: done.min(total), total }) == Flow::Stop {
            cancelled = done < total;
            break;
        }
    }
    scores.sort_by_key(|s| s.line);
    Ok(Screening {
        layer,
        method: if opts.cheap { "raw projection (cheap)" } else { "projection difference" },
        scores,
        skipped,
        cancelled,
        null,
    })
}
