//! Monitoring: projection scores onto trait directions, calibrated against neutral text so that a score reads as
//! a z-score and a percentile rather than a raw dot product (persona-method.md section 13.5).

use crate::backend::{Backend, Pass};
use crate::error::{PersonaError, Result};
use crate::stats;
use crate::vector_file::{Calibration, TraitVector};
use personascope_model::Flow;

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

/// Projections of neutral assistant text onto the unit direction of `vector` at every residual index: per answer
/// token (the live monitor's reading) and per answer average (the screening reading).
pub async fn calibrate<B: Backend>(
    backend: &mut B,
    vector: &TraitVector,
    items: &[NeutralItem],
) -> Result<Calibration> {
    calibrate_with_progress(backend, vector, items, &mut |_| Flow::Continue).await
}

/// [`calibrate`], reporting each neutral item done; `Flow::Stop` from `progress` cancels it
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
    let units: Vec<Option<Vec<f32>>> = vector.rows.iter().map(|r| stats::unit(r)).collect();
    let layers = units.len();
    let mut tokens_by_layer = vec![Vec::new(); layers];
    let mut means_by_layer = vec![Vec::new(); layers];
    for (done, item) in items.iter().enumerate() {
        if progress(crate::extract::Progress { done, total: items.len() }) == Flow::Stop {
            return Err(PersonaError::Cancelled);
        }
        let prompt = backend.chat_prompt(None, &item.question)?;
        let answer = backend.tokenizer().encode(&item.answer)?;
        let p = prompt.len();
        let tokens: Vec<u32> = prompt.into_iter().chain(answer).collect();
        let n = tokens.len();
        let out = backend
            .pass(&Pass { tokens: &tokens, capture: Some(p..n), mean_over: Some(p..n), ..Default::default() })
            .await?;
        for (l, u) in units.iter().enumerate() {
            let Some(u) = u else { continue };
            for pos in &out.captured {
                if let Some(h) = pos.get(l) {
                    tokens_by_layer[l].push(stats::dot(h, u));
                }
            }
            if let Some(h) = out.mean.as_ref().and_then(|m| m.get(l)) {
                means_by_layer[l].push(stats::dot(h, u));
            }
        }
    }
    // A layer where the vector is zero has no readings; it gets zeros (a zero spread means "no calibration" to
    // Calibration::z) since the file format stores finite statistics only.
    let f = |v: &[f32], g: fn(&[f32]) -> f32| if v.is_empty() { 0.0 } else { g(v) };
    Ok(Calibration {
        token_mean: tokens_by_layer.iter().map(|v| f(v, stats::mean)).collect(),
        token_std: tokens_by_layer.iter().map(|v| f(v, stats::std_dev)).collect(),
        token_quantiles: tokens_by_layer
            .iter()
            .map(|v| if v.is_empty() { vec![0.0; QUANTILES] } else { stats::quantiles(v, QUANTILES) })
            .collect(),
        response_mean: means_by_layer.iter().map(|v| f(v, stats::mean)).collect(),
        response_std: means_by_layer.iter().map(|v| f(v, stats::std_dev)).collect(),
        samples: items.len() as u32,
    })
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
