//! Residual-stream hooks: read and edit the residual stream between blocks (the single-sequence closure hook, for
//! research), and the reference executor of a [`Plan`] on top of it.
//!
//! Layer numbering (the persona-vector convention, docs/method.md §1): residual index `L` in `0..=N`
//! for a model of N blocks, where `L = 0` is the token embeddings and `L = k` (1..=N) is the output of block k-1
//! (0-based), after both residual additions and before the next block. This equals Hugging Face
//! `hidden_states[L]` for L < N; HF's `hidden_states[N]` has the final RMSNorm applied, ours does not (it is the
//! raw output of the last block, like every other index). llama.cpp control-vector `direction.k` is added at the
//! output of block k, i.e. our residual index k+1.

/// Called by the forward pass at every residual index with the rows of the tokens being processed.
pub trait ResidualHook {
    /// `h` holds `h.len() / d` rows of width `d`; row i is the token at absolute position `pos0 + i`.
    /// The hook may read the rows and modify them in place (steering).
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize);
}

/// No hook: the plain forward pass.
pub struct NoHook;

impl ResidualHook for NoHook {
    fn on_residual(&mut self, _: usize, _: usize, _: &mut [f32], _: usize) {}
}

impl<H: ResidualHook + ?Sized> ResidualHook for &mut H {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        (**self).on_residual(layer, pos0, h, d)
    }
}

/// Hooks run in order: earlier ones see the stream before later ones edit it. Put steering first to capture
/// the steered stream, capture first to record it unsteered.
impl<A: ResidualHook, B: ResidualHook> ResidualHook for (A, B) {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        self.0.on_residual(layer, pos0, h, d);
        self.1.on_residual(layer, pos0, h, d);
    }
}

use crate::plan::{Plan, PlanOut, Units};

/// Adds `alpha * vector` to the residual at `layer` for every position in `positions` (a [`Plan`] entry).
#[derive(Debug, Clone)]
pub struct Steering {
    pub layer: usize,
    pub vector: Vec<f32>,
    pub alpha: f32,
    /// Absolute token positions to steer (e.g. `P-1..usize::MAX` for the paper's `response` mode).
    pub positions: std::ops::Range<usize>,
}

/// Runs a [`Plan`] through the single-sequence forward pass as a closure hook: the straightforward reading of
/// the plan's semantics, which the batched engines (CPU and GPU) are tested against.
pub struct PlanHook<'a> {
    plan: &'a Plan,
    units: Option<&'a Units>,
    out: PlanOut,
    sums: Vec<Vec<f64>>,
    summed: usize,
    /// Row width, learnt from the first residual seen.
    d: usize,
}

impl<'a> PlanHook<'a> {
    pub fn new(plan: &'a Plan, units: Option<&'a Units>, n_layers: usize) -> Self {
        PlanHook { plan, units, out: PlanOut::default(), sums: vec![Vec::new(); n_layers + 1], summed: 0, d: 0 }
    }
}

impl ResidualHook for PlanHook<'_> {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        self.d = d;
        let layers = self.sums.len();
        for s in self.plan.steer.iter().filter(|s| s.layer == layer && s.vector.len() == d) {
            for (i, row) in h.chunks_exact_mut(d).enumerate() {
                if s.positions.contains(&(pos0 + i)) {
                    for (x, v) in row.iter_mut().zip(&s.vector) {
                        *x += s.alpha * v;
                    }
                }
            }
        }
        for (i, row) in h.chunks_exact(d).enumerate() {
            let pos = pos0 + i;
            if let Some(c) = self.plan.capture.as_ref().filter(|c| c.positions.contains(&pos)) {
                if layer == 0 || !self.out.captured.iter().any(|(p, _)| *p == pos) {
                    self.out.captured.push((pos, vec![Vec::new(); layers]));
                }
                if c.layers.contains(&layer) {
                    if let Some((_, rows)) = self.out.captured.iter_mut().find(|(p, _)| *p == pos) {
                        rows[layer] = row.to_vec();
                    }
                }
            }
            if let Some(m) = self.plan.mean.as_ref().filter(|m| m.positions.contains(&pos)) {
                if layer == 0 {
                    self.summed += 1;
                }
                if m.layers.contains(&layer) {
                    let sum = &mut self.sums[layer];
                    sum.resize(d, 0.0);
                    for (s, &x) in sum.iter_mut().zip(row) {
                        *s += x as f64;
                    }
                }
            }
            if let (Some(r), Some(units)) = (&self.plan.project, self.units) {
                if r.contains(&pos) {
                    if layer == 0 {
                        self.out.scores.push((pos, vec![vec![f32::NAN; layers]; units.len()]));
                    }
                    if let Some((_, sc)) = self.out.scores.iter_mut().find(|(p, _)| *p == pos) {
                        for (t, per_layer) in units.iter().enumerate() {
                            if let Some(Some(u)) = per_layer.get(layer) {
                                sc[t][layer] = personascope_gguf::dot_f32(row, u);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl PlanHook<'_> {
    /// What the plan returned over the forward calls this hook saw (log-probabilities are the caller's: the hook
    /// does not see logits).
    pub fn finish(self) -> PlanOut {
        let mut out = self.out;
        if let Some(m) = &self.plan.mean {
            let n = self.summed;
            out.mean = Some(
                self.sums
                    .iter()
                    .enumerate()
                    .map(|(l, s)| match (m.layers.contains(&l), n) {
                        (false, _) => Vec::new(),
                        (true, 0) => vec![0.0; s.len().max(self.d)],
                        (true, n) => s.iter().map(|&x| (x / n as f64) as f32).collect(),
                    })
                    .collect(),
            );
        }
        out
    }
}

impl crate::Model {
    /// The plan over `tokens` in one single-sequence forward call (the reference for the engines).
    pub fn run_plan(&self, tokens: &[u32], plan: &Plan, units: Option<&Units>) -> crate::Result<PlanOut> {
        plan.validate(tokens.len(), self.config.n_layers, self.config.d_model)?;
        let mut hook = PlanHook::new(plan, units, self.config.n_layers);
        let mut cache = self.new_cache();
        let from = plan.logprobs.as_ref().map_or(tokens.len() - 1, |r| r.start - 1);
        let logits = self.forward(&mut cache, tokens, &mut hook, crate::Logits::From(from))?;
        let vocab = self.config.vocab_size;
        let mut out = hook.finish();
        if let Some(r) = &plan.logprobs {
            for t in r.clone() {
                let row = &logits[(t - 1 - from) * vocab..(t - from) * vocab];
                out.logprobs.push(crate::plan::log_prob(row, tokens[t]));
            }
        }
        Ok(out)
    }
}
