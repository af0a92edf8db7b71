//! Monitoring: projection scores onto trait directions, calibrated against neutral text so that a score reads as
//! a z-score and a percentile rather than a raw dot product (docs/method.md §5).

use crate::backend::{self, Backend, Plan};
use crate::error::{PersonaError, Result};
use crate::stats;
use crate::vector_file::{Calibration, TraitVector};
use personascope_model::schedule::{self, GenSpec, PassSpec};
use personascope_model::Flow;
use personascope_model::SamplingParams;

/// A neutral question with a plain answer (the built-in calibration and perplexity set).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NeutralItem {
    pub question: String,
    pub answer: String,
}

#[derive(serde::Deserialize)]
struct NeutralFile {
    items: Vec<NeutralItem>,
}

/// The team-written neutral set in `crates/persona/data/neutral.json`.
pub fn neutral_set() -> Vec<NeutralItem> {
    // Embedded and checked by a unit test, so a parse failure here cannot reach a user.
    serde_json::from_str::<NeutralFile>(include_str!("../data/neutral.json")).map(|f| f.items).unwrap_or_default()
}

/// Number of quantiles kept per layer (0, 5, ..., 100 %).
pub const QUANTILES: usize = 21;

/// Greedy answer tokens generated per neutral question for the calibration (the length screening's own answers
/// default to as well).
pub const CALIBRATION_TOKENS: usize = 48;

/// Calibrates `vector` on the neutral `items` at every residual index (see [`calibrate_with_progress`]).
pub async fn calibrate<B: Backend>(
    backend: &mut B,
    vector: &TraitVector,
    items: &[NeutralItem],
) -> Result<Calibration> {
    calibrate_with_progress(backend, vector, items, &mut |_| Flow::Continue).await
}

/// Calibrates `vector` on the neutral `items`, in two batch jobs:
/// - the model's own greedy answers to the questions ([`CALIBRATION_TOKENS`] at most), projected token by token as
///   they are generated: the per-token statistics (what the live monitor reads on the model's own replies) and,
///   per answer, its mean projection;
/// - the items' written answers, projected token by token: the per-answer statistics of written neutral text (the
///   null of cheap screening) and, per item, written minus own mean (the null of projection-difference
///   screening).
///
/// `progress` sees the generations as the first half of the work; `Flow::Stop` cancels
/// ([`PersonaError::Cancelled`]): a calibration from part of the neutral set would mislead.
pub async fn calibrate_with_progress<B: Backend>(
    backend: &mut B,
    vector: &TraitVector,
    items: &[NeutralItem],
    progress: &mut dyn FnMut(crate::extract::Progress) -> Flow,
) -> Result<Calibration> {
    if items.is_empty() {
        return Err(PersonaError::Input("calibration needs at least one neutral item".into()));
    }
    let raw: Vec<Option<Vec<f32>>> = vector.rows.iter().map(|r| Some(r.clone())).collect();
    let monitor = personascope_model::plan::units(&[raw]);
    let layers = vector.rows.len();
    let total = 2 * items.len();
    let mut report =
        |base: usize, p: schedule::Progress| progress(crate::extract::Progress { done: base + p.done, total });

    let mut specs = Vec::with_capacity(items.len());
    let mut written = Vec::with_capacity(items.len());
    for item in items {
        let prompt = backend.chat_prompt(None, &item.question)?;
        let p = prompt.len();
        let plan = Plan { project: Some(p - 1..usize::MAX), ..Default::default() };
        let tokens: Vec<u32> = prompt.iter().copied().chain(backend.tokenizer().encode(&item.answer)?).collect();
        let n = tokens.len();
        written.push(PassSpec { tokens, plan: Plan { project: Some(p..n), ..Default::default() } });
        specs.push(GenSpec { prompt, max_tokens: CALIBRATION_TOKENS, sampling: SamplingParams::greedy(), plan });
    }
    let own = backend::generate_polled(backend, &specs, Some(monitor.clone()), &mut |p| report(0, p)).await?;
    if own.iter().any(|r| r.stop == personascope_model::StopReason::Cancelled) {
        return Err(PersonaError::Cancelled);
    }
    let written = backend::all_passes(backend, &written, Some(monitor), &mut |p| report(items.len(), p)).await?;

    let at = |s: &Vec<Vec<f32>>, l: usize| s.first().and_then(|t| t.get(l)).copied().unwrap_or(f32::NAN);
    let mut tokens_by_layer = vec![Vec::new(); layers];
    let mut written_by_layer = vec![Vec::new(); layers];
    let mut diff_by_layer = vec![Vec::new(); layers];
    for (reply, out) in own.iter().zip(&written) {
        for l in 0..layers {
            let own_scores: Vec<f32> = reply.scores.iter().map(|s| at(s, l)).filter(|x| x.is_finite()).collect();
            let written_scores: Vec<f32> = out.scores.iter().map(|(_, s)| at(s, l)).filter(|x| x.is_finite()).collect();
            tokens_by_layer[l].extend_from_slice(&own_scores);
            if written_scores.is_empty() {
                continue;
            }
            let w = stats::mean(&written_scores);
            written_by_layer[l].push(w);
            if !own_scores.is_empty() {
                diff_by_layer[l].push(w - stats::mean(&own_scores));
            }
        }
    }
    // A layer where the vector is zero has no readings; it gets zeros (a zero spread means "no calibration" to
    // Calibration::z) since the file format stores finite statistics only.
    let f = |v: &[f32], g: fn(&[f32]) -> f32| if v.is_empty() { 0.0 } else { g(v) };
    let per_layer = |by: &[Vec<f32>], g: fn(&[f32]) -> f32| by.iter().map(|v| f(v, g)).collect::<Vec<f32>>();
    Ok(Calibration {
        token_mean: per_layer(&tokens_by_layer, stats::mean),
        token_std: per_layer(&tokens_by_layer, stats::std_dev),
        token_quantiles: tokens_by_layer
            .iter()
            .map(|v| if v.is_empty() { vec![0.0; QUANTILES] } else { stats::quantiles(v, QUANTILES) })
            .collect(),
        response_mean: per_layer(&written_by_layer, stats::mean),
        response_std: per_layer(&written_by_layer, stats::std_dev),
        difference_mean: per_layer(&diff_by_layer, stats::mean),
        difference_std: per_layer(&diff_by_layer, stats::std_dev),
        samples: items.len() as u32,
    })
}

/// The expected false-positive rate of flagging at `z >= threshold` when neutral scores are normal (the upper tail
/// of a standard normal), shown beside a threshold.
pub fn normal_tail(threshold: f32) -> f32 {
    let z = threshold as f64;
    if !z.is_finite() {
        return if z > 0.0 { 0.0 } else { 1.0 };
    }
    // Simpson's rule over the density from |z| to |z| + 12 (the rest is below 1e-32); the lower tail by symmetry.
    let (a, steps) = (z.abs(), 4000);
    let h = 12.0 / steps as f64;
    let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut sum = pdf(a) + pdf(a + 12.0);
    for i in 1..steps {
        sum += pdf(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    let upper = sum * h / 3.0;
    (if z >= 0.0 { upper } else { 1.0 - upper }) as f32
}

/// One trait read at one layer.
#[derive(Debug, Clone)]
pub struct Reading {
    pub trait_name: String,
    pub layer: usize,
    pub unit: Vec<f32>,
    pub calibration: Option<Calibration>,
}

/// A score with its calibrated forms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Score {
    pub raw: f32,
    /// (raw - neutral mean) / neutral std, per token; None without calibration.
    pub z: Option<f32>,
    /// Percentile among neutral tokens (0..100).
    pub percentile: Option<f32>,
}

impl Reading {
    /// The vector's direction at `layer` (or its recommended layer).
    pub fn new(vector: &TraitVector, layer: Option<usize>) -> Result<Self> {
        let layer = layer.or(vector.meta.layer).ok_or_else(|| {
            PersonaError::Input(format!(
                "no layer given for trait {:?} and its vector file recommends none",
                vector.meta.trait_name.as_deref().unwrap_or("?")
            ))
        })?;
        let row = vector.rows.get(layer).ok_or_else(|| {
            PersonaError::Input(format!("layer {layer} out of range (0..={})", vector.rows.len().saturating_sub(1)))
        })?;
        let unit = stats::unit(row)
            .ok_or_else(|| PersonaError::Input(format!("the vector is zero at layer {layer}; pick another layer")))?;
        Ok(Reading {
            trait_name: vector.meta.trait_name.clone().unwrap_or_else(|| "trait".into()),
            layer,
            unit,
            calibration: vector.meta.calibration.clone(),
        })
    }

    /// Calibrates a per-token projection.
    pub fn token_score(&self, raw: f32) -> Score {
        let c = self.calibration.as_ref();
        Score {
            raw,
            z: c.and_then(|c| c.z(self.layer, raw)),
            percentile: c.and_then(|c| c.percentile(self.layer, raw)),
        }
    }

    /// The direction set the engines take: this trait at its layer only.
    pub fn monitor_row(&self, layers: usize) -> Vec<Option<Vec<f32>>> {
        (0..layers).map(|l| (l == self.layer).then(|| self.unit.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        for (z, p) in
            [(0.0f32, 0.5f32), (1.0, 0.158_655_25), (2.0, 0.022_750_13), (3.0, 0.001_349_9), (-2.0, 0.977_249_87)]
        {
            assert!((normal_tail(z) - p).abs() < 1e-6, "z {z}: {} vs {p}", normal_tail(z));
        }
    }

    #[test]
    fn neutral_set_parses_and_is_disjoint_from_trait_and_screening_questions() {
        let items = neutral_set();
        assert!(items.len() >= 16, "{} items", items.len());
        let norm = |s: &str| crate::normalize_question(s);
        let mut others: Vec<String> = Vec::new();
        for def in crate::builtin() {
            others.extend(def.extraction_questions.iter().map(|q| norm(q)));
            others.extend(def.evaluation_questions.iter().map(|q| norm(&q.question)));
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/screening");
        for name in ["evil", "sycophantic", "impolite", "humorous"] {
            let text = std::fs::read_to_string(format!("{dir}/{name}.jsonl")).expect("screening data");
            for s in crate::dataset::parse_jsonl(&text).samples {
                others.extend(s.prompt.iter().map(|m| norm(&m.content)));
            }
        }
        for it in &items {
            assert!(!it.answer.is_empty());
            assert!(!others.contains(&norm(&it.question)), "neutral question reused elsewhere: {}", it.question);
        }
    }
}
