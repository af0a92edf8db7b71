//! Residual-stream hooks: read and edit the residual stream between blocks.
//!
//! Layer numbering (the persona-vector convention, `persona-method.md` section 1): residual index `L` in `0..=N`
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

/// Adds `alpha * vector` to the residual at `layer` for every position in `positions`.
#[derive(Debug, Clone)]
pub struct Steering {
    pub layer: usize,
    pub vector: Vec<f32>,
    pub alpha: f32,
    /// Absolute token positions to steer (e.g. `P-1..usize::MAX` for the paper's `response` mode).
    pub positions: std::ops::Range<usize>,
}

/// Several steering vectors at once.
#[derive(Debug, Clone, Default)]
pub struct Steer(pub Vec<Steering>);

impl ResidualHook for Steer {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        for s in self.0.iter().filter(|s| s.layer == layer && s.vector.len() == d) {
            for (i, row) in h.chunks_exact_mut(d).enumerate() {
                if s.positions.contains(&(pos0 + i)) {
                    for (x, v) in row.iter_mut().zip(&s.vector) {
                        *x += s.alpha * v;
                    }
                }
            }
        }
    }
}

/// Records the residual at chosen layers for chosen positions: `rows[layer]` gets one `(position, vector)` per
/// captured token, in order.
#[derive(Debug, Clone)]
pub struct Capture {
    /// `wanted[L]`: capture residual index L.
    pub wanted: Vec<bool>,
    pub positions: std::ops::Range<usize>,
    pub rows: Vec<Vec<(usize, Vec<f32>)>>,
}

impl Capture {
    /// Captures residual indices `layers` (each in 0..=n_layers) at `positions`.
    pub fn new(n_layers: usize, layers: impl IntoIterator<Item = usize>, positions: std::ops::Range<usize>) -> Self {
        let mut wanted = vec![false; n_layers + 1];
        for l in layers {
            if let Some(w) = wanted.get_mut(l) {
                *w = true;
            }
        }
        Capture { wanted, positions, rows: vec![Vec::new(); n_layers + 1] }
    }

    /// Every residual index 0..=n_layers.
    pub fn all_layers(n_layers: usize, positions: std::ops::Range<usize>) -> Self {
        Self::new(n_layers, 0..=n_layers, positions)
    }
}

impl ResidualHook for Capture {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        if !self.wanted.get(layer).copied().unwrap_or(false) {
            return;
        }
        for (i, row) in h.chunks_exact(d).enumerate() {
            if self.positions.contains(&(pos0 + i)) {
                self.rows[layer].push((pos0 + i, row.to_vec()));
            }
        }
    }
}

/// Projects the residual of every processed token onto unit trait directions: for each token (in order) one row
/// of `scores[trait][layer]` = h_layer . v_hat (NaN where a trait has no vector at that layer). This is the CPU
/// monitor; the GPU engine computes the same inside its forward pass.
#[derive(Debug, Clone)]
pub struct Projection {
    /// `units[t][l]`: the unit direction of trait t at residual index l, if monitored there.
    pub units: Vec<Vec<Option<Vec<f32>>>>,
    /// One entry per token processed: (position, scores[t][l]).
    pub scores: Vec<(usize, Vec<Vec<f32>>)>,
    /// Only tokens at these positions are scored.
    pub positions: std::ops::Range<usize>,
}

impl Projection {
    /// `vectors[t][l]` raw directions (normalized here; zero vectors are skipped).
    pub fn new(vectors: Vec<Vec<Option<Vec<f32>>>>, positions: std::ops::Range<usize>) -> Self {
        let units = vectors
            .into_iter()
            .map(|per_layer| {
                per_layer
                    .into_iter()
                    .map(|v| {
                        v.and_then(|v| {
                            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                            (norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
                        })
                    })
                    .collect()
            })
            .collect();
        Projection { units, scores: Vec::new(), positions }
    }
}

impl ResidualHook for Projection {
    fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
        let n_layers = self.units.first().map_or(0, |u| u.len());
        for (i, row) in h.chunks_exact(d).enumerate() {
            let pos = pos0 + i;
            if !self.positions.contains(&pos) {
                continue;
            }
            // Rows arrive layer by layer; the score table of a position is created at its first layer.
            let idx = match self.scores.iter().rposition(|(p, _)| *p == pos) {
                Some(idx) => idx,
                None => {
                    self.scores.push((pos, vec![vec![f32::NAN; n_layers]; self.units.len()]));
                    self.scores.len() - 1
                }
            };
            for (t, per_layer) in self.units.iter().enumerate() {
                if let Some(Some(u)) = per_layer.get(layer) {
                    if u.len() == d {
                        self.scores[idx].1[t][layer] = personascope_gguf::dot_f32(row, u);
                    }
                }
            }
        }
    }
}
