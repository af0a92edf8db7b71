//! The hook plan: one plain description of what a forward pass does to and reads from the residual stream of one
//! sequence, executed with the same semantics by the CPU engine ([`crate::cpu::CpuEngine`]) and the GPU engine.
//!
//! Numbering: residual index `L` in `0..=N` (0 = token embeddings, `k` = output of block `k-1` after both residual
//! additions); positions are absolute positions in the sequence (0 = its first token). At every residual index the
//! steering entries of that index are added first, then the reads (capture, sums, projections) see the steered
//! stream. Log-probabilities come from the final norm and LM head of the (steered) last block.

use std::ops::Range;
use std::sync::Arc;

use crate::hooks::Steering;

/// Unit directions `[trait][residual index]` (None: that trait is not read at that index); see [`units`].
pub type Units = Vec<Vec<Option<Vec<f32>>>>;

/// Rows `[N+1][d]`, one per residual index; an index a read did not ask for holds an empty row.
pub type Layers = Vec<Vec<f32>>;

/// Positions and residual indices a read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub positions: Range<usize>,
    /// Residual indices, each in `0..=N` (duplicates are ignored).
    pub layers: Vec<usize>,
}

impl Span {
    /// Every residual index `0..=n_layers` at `positions`.
    pub fn all_layers(positions: Range<usize>, n_layers: usize) -> Self {
        Span { positions, layers: (0..=n_layers).collect() }
    }
}

/// What one sequence's forward pass does at the residual stream.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// `alpha * vector` added at residual index `layer` for the positions of each entry, in order.
    pub steer: Vec<Steering>,
    /// The residual rows of these positions at these indices: [`PlanOut::captured`].
    pub capture: Option<Span>,
    /// The mean residual over these positions at these indices: [`PlanOut::mean`].
    pub mean: Option<Span>,
    /// Projections of every position in this range onto the batch's monitor [`Units`]: [`PlanOut::scores`].
    pub project: Option<Range<usize>>,
    /// `log p(token[t] | tokens[..t])` for every `t` in this range (`t >= 1`): [`PlanOut::logprobs`].
    pub logprobs: Option<Range<usize>>,
}

impl Plan {
    /// The deepest residual index a read of this plan needs (None: it reads nothing from the residual stream).
    pub fn deepest_read(&self) -> Option<usize> {
        let spans = [&self.capture, &self.mean].into_iter().flatten();
        spans.flat_map(|s| s.layers.iter().copied()).max()
    }

    /// Whether the plan needs the LM head (log-probabilities).
    pub fn needs_head(&self) -> bool {
        self.logprobs.as_ref().is_some_and(|r| !r.is_empty())
    }

    /// The first position whose residuals, logits or steering this plan touches, for a sequence of `len` tokens:
    /// the positions before it are plain and can come from the KV cache of another sequence with the same tokens.
    pub fn first_touched(&self, len: usize) -> usize {
        let starts = [
            self.capture.as_ref().map(|s| s.positions.start),
            self.mean.as_ref().map(|s| s.positions.start),
            self.project.as_ref().map(|r| r.start),
            self.logprobs.as_ref().map(|r| r.start.saturating_sub(1)),
        ];
        let steer = self.steer.iter().map(|s| s.positions.start);
        starts.into_iter().flatten().chain(steer).fold(len.saturating_sub(1), usize::min)
    }

    /// Checks the plan against a model of `n_layers` blocks and width `d` for a sequence of `len` tokens.
    pub fn validate(&self, len: usize, n_layers: usize, d: usize) -> crate::Result<()> {
        let bad = |m: String| Err(crate::ModelError::Hook(m));
        for s in &self.steer {
            if s.layer > n_layers || s.vector.len() != d {
                return bad(format!(
                    "steering vector for residual index {} of length {} (the model has indices 0..={n_layers}, width {d})",
                    s.layer,
                    s.vector.len()
                ));
            }
            if !s.alpha.is_finite() {
                return bad(format!("steering alpha {} is not finite", s.alpha));
            }
        }
        for (what, span) in [("capture", &self.capture), ("mean", &self.mean)] {
            if let Some(&l) = span.as_ref().and_then(|s| s.layers.iter().find(|&&l| l > n_layers)) {
                return bad(format!("{what} at residual index {l}; the model has 0..={n_layers}"));
            }
        }
        if let Some(r) = &self.logprobs {
            if r.start == 0 || r.end > len {
                return bad(format!("log-probabilities asked for positions {r:?} of {len} tokens"));
            }
        }
        Ok(())
    }
}

/// What a [`Plan`] returns for one sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanOut {
    /// `(position, rows)` for every captured position, in position order.
    pub captured: Vec<(usize, Layers)>,
    /// The mean over the `mean` span's positions that the sequence holds (zeros when it holds none).
    pub mean: Option<Layers>,
    /// `(position, scores[trait][residual index])` for every projected position, in order; NaN where a trait is
    /// not read at an index.
    pub scores: Vec<(usize, Vec<Vec<f32>>)>,
    /// One value per position of the `logprobs` range, in order.
    pub logprobs: Vec<f32>,
}

impl PlanOut {
    /// The captured rows of `position`.
    pub fn row(&self, position: usize) -> Option<&Layers> {
        self.captured.iter().find(|(p, _)| *p == position).map(|(_, r)| r)
    }
}

/// Unit directions from raw vectors `[trait][residual index]` (zero or non-finite vectors are dropped).
pub fn units(vectors: &[Vec<Option<Vec<f32>>>]) -> Arc<Units> {
    Arc::new(vectors.iter().map(|per_layer| per_layer.iter().map(|v| v.as_deref().and_then(unit)).collect()).collect())
}

/// `v / |v|`, or None for a zero or non-finite vector.
pub fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| (*x as f64 / norm) as f32).collect())
}

/// `log softmax(logits)[id]`, with the sum in f64.
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let l = logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
    ((l - max) as f64 - sum.ln()) as f32
}
