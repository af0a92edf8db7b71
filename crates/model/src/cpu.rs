//! The CPU reference model as an [`Engine`]: waves of sequences in ragged batches (one matrix product for the rows
//! of every sequence at once), plans executed between blocks, the LM head only over the rows whose logits are
//! needed, and no block run past the deepest residual index a wave reads.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::{wave_blocks, Engine, Limits, StepToken, Wave, WaveSeq};
use crate::model::{KvStore, Segment};
use crate::plan::{log_prob, PlanOut, Units};
use crate::{ChatTemplate, Config, Model, ModelError, Result, Sampler, Tokenizer};

/// Rows one forward call processes at most (the matrix products' batch).
pub const CPU_ROWS: usize = 256;
/// Logit rows computed at once (each is a vocabulary of f32).
const HEAD_ROWS: usize = 64;

/// Keys and values of one sequence of the wave.
struct SeqKv {
    /// Own keys and values per block: [own rows, kv_dim].
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// (wave index, length) of the prefix whose cache holds this sequence's first positions.
    prefix: Option<(usize, usize)>,
}

/// Everything else of one sequence of the wave.
struct SeqState {
    spec: WaveSeq,
    /// Positions held (prefix + own rows processed).
    len: usize,
    /// Sums of the `mean` span per residual index (f64; empty where not summed) and the positions added.
    sums: Vec<Vec<f64>>,
    summed: usize,
    out: PlanOut,
    /// Logits of the last row, for the next sampled token.
    logits: Vec<f32>,
    sampler: Option<Sampler>,
    /// Every token of the sequence so far (the repetition-penalty context).
    history: Vec<u32>,
}

/// The reference model running waves.
pub struct CpuEngine<'m> {
    pub model: &'m Model,
    kv: Vec<SeqKv>,
    seqs: Vec<SeqState>,
    monitor: Option<Arc<Units>>,
    /// Blocks the current wave runs.
    blocks: usize,
    pending: VecDeque<Vec<StepToken>>,
    /// KV rows a wave may hold (memory: 2 * blocks * kv_dim * 4 bytes each).
    pub kv_rows: usize,
    /// Rows per forward call.
    pub rows: usize,
}

/// The wave's caches as the blocks see them: segment i of a call belongs to sequence `seg_seq[i]`.
struct Store<'a> {
    kv: &'a mut [SeqKv],
    seg_seq: &'a [usize],
    kv_dim: usize,
}

impl KvStore for Store<'_> {
    fn append(&mut self, seg: usize, layer: usize, k: &[f32], v: &[f32]) {
        if let Some(s) = self.seg_seq.get(seg).and_then(|&s| self.kv.get_mut(s)) {
            s.k[layer].extend_from_slice(k);
            s.v[layer].extend_from_slice(v);
        }
    }

    fn parts(&self, seg: usize, layer: usize) -> [(&[f32], &[f32]); 2] {
        let empty: (&[f32], &[f32]) = (&[], &[]);
        let Some(s) = self.seg_seq.get(seg).and_then(|&s| self.kv.get(s)) else { return [empty, empty] };
        let own = (&s.k[layer][..], &s.v[layer][..]);
        match s.prefix.and_then(|(p, len)| self.kv.get(p).map(|p| (p, len * self.kv_dim))) {
            Some((p, n)) => [(&p.k[layer][..n.min(p.k[layer].len())], &p.v[layer][..n.min(p.v[layer].len())]), own],
            None => [own, empty],
        }
    }
}

impl<'m> CpuEngine<'m> {
    pub fn new(model: &'m Model) -> Self {
        CpuEngine {
            model,
            kv: Vec::new(),
            seqs: Vec::new(),
            monitor: None,
            blocks: 0,
            pending: VecDeque::new(),
            kv_rows: 1 << 15,
            rows: CPU_ROWS,
        }
    }

    /// Runs `rows` (wave index, token) through the wave's blocks with every plan applied; rows of a sequence are
    /// consecutive and continue it. Returns the residual rows after the last block.
    fn forward(&mut self, rows: &[(usize, u32)]) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let (d, layers) = (c.d_model, c.n_layers + 1);
        let mut segs: Vec<Segment> = Vec::new();
        let mut seg_seq: Vec<usize> = Vec::new();
        for (r, &(s, _)) in rows.iter().enumerate() {
            match (seg_seq.last(), segs.last_mut()) {
                (Some(&last), Some(g)) if last == s => g.rows.end = r + 1,
                _ => {
                    let pos0 =
                        self.seqs.get(s).map(|q| q.len).ok_or_else(|| ModelError::Hook(format!("no sequence {s}")))?;
                    segs.push(Segment { pos0, rows: r..r + 1 });
                    seg_seq.push(s);
                }
            }
        }
        let tokens: Vec<u32> = rows.iter().map(|&(_, t)| t).collect();
        // Output slots exist before the blocks run, so every residual index finds them.
        for (g, &s) in segs.iter().zip(&seg_seq) {
            let seq = &mut self.seqs[s];
            for pos in g.pos0..g.pos0 + g.rows.len() {
                let p = &seq.spec.plan;
                if p.capture.as_ref().is_some_and(|cs| cs.positions.contains(&pos)) {
                    seq.out.captured.push((pos, vec![Vec::new(); layers]));
                }
                if p.mean.as_ref().is_some_and(|m| m.positions.contains(&pos)) {
                    seq.summed += 1;
                }
                if let (Some(r), Some(units)) = (&p.project, &self.monitor) {
                    if r.contains(&pos) {
                        seq.out.scores.push((pos, vec![vec![f32::NAN; layers]; units.len()]));
                    }
                }
            }
        }
        let (model, blocks, monitor) = (self.model, self.blocks, self.monitor.clone());
        let states = &mut self.seqs;
        let mut store = Store { kv: &mut self.kv, seg_seq: &seg_seq, kv_dim: c.kv_dim() };
        let x = model.run_blocks(&tokens, &segs, &mut store, blocks, &mut |layer, x| {
            for (g, &s) in segs.iter().zip(&seg_seq) {
                apply_plan(&mut states[s], layer, g, &mut x[g.rows.start * d..g.rows.end * d], d, monitor.as_deref());
            }
        })?;
        for (g, &s) in segs.iter().zip(&seg_seq) {
            self.seqs[s].len += g.rows.len();
            self.seqs[s].history.extend_from_slice(&tokens[g.rows.clone()]);
        }
        Ok(x)
    }

    /// Logits of the given rows of `x` (final norm and LM head), `HEAD_ROWS` at a time: `f(i, logits of rows[i])`.
    fn head_rows(&self, x: &[f32], rows: &[usize], mut f: impl FnMut(usize, &[f32])) {
        let d = self.model.config.d_model;
        let vocab = self.model.config.vocab_size;
        for (ci, chunk) in rows.chunks(HEAD_ROWS).enumerate() {
            let gathered: Vec<f32> = chunk.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect();
            let logits = self.model.head(&gathered);
            for (i, l) in logits.chunks_exact(vocab).enumerate() {
                f(ci * HEAD_ROWS + i, l);
            }
        }
    }

    /// Log-probabilities and next-token logits wanted from the rows of one forward call.
    fn after_forward(&mut self, rows: &[(usize, u32)], x: &[f32], all_logits: bool) {
        // (row, sequence, Some(target) for a log-probability / None for the sequence's next-token logits).
        let mut wanted: Vec<(usize, usize, Option<u32>)> = Vec::new();
        // Rows of a sequence are consecutive and end at its (already advanced) length.
        let mut end_of: Vec<usize> = self.seqs.iter().map(|s| s.len).collect();
        let mut next_pos = vec![0usize; rows.len()];
        for (r, &(s, _)) in rows.iter().enumerate().rev() {
            end_of[s] -= 1;
            next_pos[r] = end_of[s];
        }
        for (r, &(s, _)) in rows.iter().enumerate() {
            let seq = &self.seqs[s];
            let pos = next_pos[r];
            if let Some(lp) = &seq.spec.plan.logprobs {
                // The logits at pos give log p(token at pos + 1).
                if lp.contains(&(pos + 1)) {
                    let own = pos + 1 - seq.spec.start();
                    if let Some(&t) = seq.spec.tokens.get(own) {
                        wanted.push((r, s, Some(t)));
                    }
                }
            }
            let last_own = pos + 1 == seq.len;
            if all_logits || (last_own && seq.spec.generate.is_some()) {
                wanted.push((r, s, None));
            }
        }
        if wanted.is_empty() {
            return;
        }
        let head: Vec<usize> = wanted.iter().map(|w| w.0).collect();
        let mut results: Vec<(usize, Option<f32>, Option<Vec<f32>>)> = Vec::with_capacity(wanted.len());
        self.head_rows(x, &head, |i, logits| {
            let (_, s, target) = wanted[i];
            match target {
                Some(t) => results.push((s, Some(log_prob(logits, t)), None)),
                None => results.push((s, None, Some(logits.to_vec()))),
            }
        });
        for (s, lp, logits) in results {
            let seq = &mut self.seqs[s];
            if let Some(lp) = lp {
                seq.out.logprobs.push(lp);
            }
            if let Some(l) = logits {
                seq.logits = l;
            }
        }
    }

    /// The means of the sums, where the plan asked for them.
    fn finish_means(seq: &mut SeqState, d: usize) {
        if let Some(m) = &seq.spec.plan.mean {
            let n = seq.summed;
            seq.out.mean = Some(
                seq.sums
                    .iter()
                    .enumerate()
                    .map(|(l, s)| {
                        if !m.layers.contains(&l) {
                            Vec::new()
                        } else if n == 0 || s.is_empty() {
                            vec![0.0; d]
                        } else {
                            s.iter().map(|&x| (x / n as f64) as f32).collect()
                        }
                    })
                    .collect(),
            );
        }
    }
}

/// Steering, then the reads, of one sequence's rows at residual index `layer`.
fn apply_plan(seq: &mut SeqState, layer: usize, g: &Segment, x: &mut [f32], d: usize, monitor: Option<&Units>) {
    let plan = &seq.spec.plan;
    for s in plan.steer.iter().filter(|s| s.layer == layer) {
        for (i, row) in x.chunks_exact_mut(d).enumerate() {
            if s.positions.contains(&(g.pos0 + i)) {
                for (h, v) in row.iter_mut().zip(&s.vector) {
                    *h += s.alpha * v;
                }
            }
        }
    }
    for (i, row) in x.chunks_exact(d).enumerate() {
        let pos = g.pos0 + i;
        if let Some(cs) = &plan.capture {
            if cs.positions.contains(&pos) && cs.layers.contains(&layer) {
                if let Some((_, rows)) = seq.out.captured.iter_mut().rev().find(|(p, _)| *p == pos) {
                    rows[layer] = row.to_vec();
                }
            }
        }
        if let Some(m) = &plan.mean {
            if m.positions.contains(&pos) && m.layers.contains(&layer) {
                if seq.sums[layer].is_empty() {
                    seq.sums[layer] = vec![0.0; d];
                }
                for (s, &h) in seq.sums[layer].iter_mut().zip(row) {
                    *s += h as f64;
                }
            }
        }
        if let (Some(r), Some(units)) = (&plan.project, monitor) {
            if r.contains(&pos) {
                if let Some((_, sc)) = seq.out.scores.iter_mut().rev().find(|(p, _)| *p == pos) {
                    for (t, per_layer) in units.iter().enumerate() {
                        if let Some(Some(u)) = per_layer.get(layer) {
                            if u.len() == d {
                                sc[t][layer] = personascope_gguf::dot_f32(row, u);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Engine for CpuEngine<'_> {
    type Error = ModelError;

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
    fn limits(&self) -> Limits {
        Limits { kv_rows: self.kv_rows, seqs: 4096, gen_seqs: 64, out_floats: 1 << 28, traits: 64 }
    }

    async fn prefill(&mut self, wave: &Wave) -> Result<Vec<PlanOut>> {
        let c = self.model.config.clone();
        let (blocks, layers) = (c.n_layers, c.n_layers + 1);
        self.pending.clear();
        self.monitor = wave.monitor.clone();
        self.blocks = wave_blocks(wave, blocks);
        self.kv.clear();
        self.seqs.clear();
        for (i, s) in wave.seqs.iter().enumerate() {
            if let Some((p, len)) = s.prefix {
                // A prefix is an earlier, plain sequence of the wave that holds the shared positions.
                let ok = p < i && wave.seqs[p].prefix.is_none() && wave.seqs[p].tokens.len() >= len;
                if !ok {
                    return Err(ModelError::Hook(format!(
                        "sequence {i} continues sequence {p}, which is not an earlier plain sequence of {len} tokens or more"
                    )));
                }
            }
            // The repetition-penalty context starts with the prefix's tokens.
            let history = match s.prefix {
                Some((p, len)) => wave.seqs[p].tokens[..len].to_vec(),
                None => Vec::new(),
            };
            self.kv.push(SeqKv { k: vec![Vec::new(); blocks], v: vec![Vec::new(); blocks], prefix: s.prefix });
            self.seqs.push(SeqState {
                spec: s.clone(),
                len: s.start(),
                sums: vec![Vec::new(); layers],
                summed: 0,
                out: PlanOut::default(),
                logits: Vec::new(),
                sampler: match &s.generate {
                    Some((p, _)) => Some(Sampler::new(p.clone())?),
                    None => None,
                },
                history,
            });
        }
        let all: Vec<(usize, u32)> =
            wave.seqs.iter().enumerate().flat_map(|(i, s)| s.tokens.iter().map(move |&t| (i, t))).collect();
        let mut start = 0;
        while start < all.len() {
            // A chunk ends at the row budget; a sequence may continue in the next chunk.
            let end = (start + self.rows.max(1)).min(all.len());
            let chunk = &all[start..end];
            let x = self.forward(chunk)?;
            self.after_forward(chunk, &x, false);
            start = end;
        }
        let d = c.d_model;
        Ok(self
            .seqs
            .iter_mut()
            .map(|s| {
                Self::finish_means(s, d);
                std::mem::take(&mut s.out)
            })
            .collect())
    }

    fn submit_step(&mut self, active: &[usize], step: u32) -> Result<()> {
        let _ = step;
        let mut rows = Vec::with_capacity(active.len());
        for &s in active {
            let seq = self.seqs.get_mut(s).ok_or_else(|| ModelError::Hook(format!("no sequence {s}")))?;
            let sampler =
                seq.sampler.as_mut().ok_or_else(|| ModelError::Hook(format!("sequence {s} does not generate")))?;
            if seq.logits.is_empty() {
                return Err(ModelError::Hook(format!("sequence {s} has no logits to sample from")));
            }
            let id = sampler.sample(&seq.logits, &seq.history);
            rows.push((s, id));
        }
        let x = self.forward(&rows)?;
        self.after_forward(&rows, &x, true);
        let tokens = rows
            .iter()
            .map(|&(s, token)| {
                let seq = &mut self.seqs[s];
                // The fed token's projections, when its position is in the plan's range.
                let pos = seq.len - 1;
                let scores = match seq.out.scores.last() {
                    Some((p, _)) if *p == pos => seq.out.scores.pop().map(|(_, sc)| sc).unwrap_or_default(),
                    _ => Vec::new(),
                };
                StepToken { seq: s, token, scores }
            })
            .collect();
        self.pending.push_back(tokens);
        Ok(())
    }

    async fn finish_step(&mut self) -> Result<Vec<StepToken>> {
        self.pending.pop_front().ok_or_else(|| ModelError::Hook("no decode step was submitted".into()))
    }
}
