//! The GPU engine as a [`personascope_model::Engine`]: a wave's sequences get KV regions and result slots, their
//! rows go through forward calls of up to `batch` rows each (row table and hook lists uploaded per call), and the
//! wave's results come back in one readback; decode steps sample every generating sequence on the GPU, one submit
//! and one small readback each, one step in flight ahead of the one being read.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use personascope_model::engine::{distinct, wave_blocks, Engine, Limits, StepToken, Wave};
use personascope_model::plan::{Layers, Plan, PlanOut, Span};
use personascope_model::schedule::{self, GenSpec};
use personascope_model::{ChatTemplate, Config, Flow, SamplingParams, Tokenizer, Units};

use crate::engine::{CallPlan, ChunkPlan, GpuModel};
use crate::kernel::read_staging_after;
use crate::kernels::sample;
use crate::profile::Profiler;
use crate::rows::{List, Lists, Row};
use crate::{GpuError, Result};

/// u32 words of a decode step's region of the out buffer: the sampler's records, then the scores.
pub(crate) fn step_words(seqs: usize, traits: usize, layers: usize) -> usize {
    seqs * sample::OUT_WORDS as usize + seqs * traits * layers
}

/// Where a sequence's results sit in the out buffer (f32 offsets).
#[derive(Debug, Clone, Default)]
struct Slots {
    /// (offset, positions, residual indices): position p's rows at `offset + ((p - start) * layers + i) * d`.
    capture: Option<(usize, Range<usize>, Vec<usize>)>,
    /// (offset, residual indices, positions summed).
    mean: Option<(usize, Vec<usize>, usize)>,
    /// (offset, positions): position p's scores [traits][layers] at `offset + (p - start) * traits * layers`.
    project: Option<(usize, Range<usize>)>,
    /// (offset, positions t whose log p(token t) is wanted).
    logprobs: Option<(usize, Range<usize>)>,
}

/// One sequence of the current wave.
#[derive(Debug, Clone)]
struct Seq {
    start: usize,
    tokens: Vec<u32>,
    plan: Plan,
    own_base: u32,
    prefix_base: u32,
    /// Positions held so far, and the first KV row past the sequence's region.
    len: usize,
    kv_end: usize,
    slots: Slots,
    /// (sampling, history base) of a generating sequence.
    generate: Option<(SamplingParams, usize)>,
}

impl Seq {
    fn row(&self, seq: usize, pos: usize) -> Row {
        Row {
            pos: pos as u32,
            seq: seq as u32,
            kv_row: self.own_base + (pos - self.start) as u32,
            own_base: self.own_base,
            prefix_base: self.prefix_base,
            prefix_len: self.start as u32,
            _pad: [0; 2],
        }
    }
}

/// A forward call ready to submit: its row table, tokens and plan, and the generating sequences whose next-token
/// logits it computes (in logits-row order).
type Call = (Vec<Row>, Vec<u32>, CallPlan, Vec<usize>);

/// A submitted decode step whose records are not read yet.
struct Pending {
    slot: usize,
    active: Vec<usize>,
    projected: Vec<bool>,
    submission: wgpu::SubmissionIndex,
}

/// The engine's state between calls of one wave.
#[derive(Default)]
pub(crate) struct WaveState {
    seqs: Vec<Seq>,
    blocks: usize,
    /// Per wave sequence: the logits row holding its latest logits (generating sequences).
    logits_row: Vec<u32>,
    pending: VecDeque<Pending>,
    next_slot: usize,
}

fn overlap(r: &Range<usize>, own: &Range<usize>) -> Range<usize> {
    let (a, b) = (r.start.max(own.start), r.end.min(own.end));
    a..b.max(a)
}

impl GpuModel {
    fn layers(&self) -> usize {
        self.config.n_layers + 1
    }

    fn traits(&self) -> usize {
        self.monitor.as_ref().map_or(0, |m| m.traits)
    }

    /// Residual indices (up to `blocks`) where some monitored trait has a direction.
    fn projected_layers(&self, blocks: usize) -> Vec<usize> {
        let layers = self.layers();
        match &self.monitor {
            Some(m) => {
                (0..=blocks.min(layers - 1)).filter(|&l| (0..m.traits).any(|t| m.packed.on(t, l, layers))).collect()
            }
            None => Vec::new(),
        }
    }

    /// Sets up `wave`: checks it, gives every sequence its KV region and result slots, uploads the monitor,
    /// steering and histories. Returns the out values used.
    fn begin_wave(&mut self, wave: &Wave) -> Result<usize> {
        let bad = |m: String| Err(GpuError::Unsupported(m));
        let (d, layers, max) = (self.config.d_model, self.layers(), self.options.max_positions);
        let gens = wave.seqs.iter().filter(|s| s.generate.is_some()).count();
        if gens > self.options.head_rows {
            return bad(format!("{gens} generating sequences in one wave (at most {})", self.options.head_rows));
        }
        if gens > 0 && wave.seqs.iter().any(|s| s.plan.needs_head()) {
            return bad("a wave cannot both generate and take log-probabilities".into());
        }
        let projects = wave.seqs.iter().any(|s| s.plan.project.is_some());
        self.upload_monitor(if projects { wave.monitor.as_ref() } else { None })?;
        let traits = self.traits();
        self.upload_steering(wave.seqs.iter().enumerate().flat_map(|(i, s)| s.plan.steer.iter().map(move |e| (i, e))));
        let (mut kv, mut out, mut hist) = (0usize, 0usize, 0usize);
        let mut seqs: Vec<Seq> = Vec::with_capacity(wave.seqs.len());
        for (i, s) in wave.seqs.iter().enumerate() {
            let c = &self.config;
            s.plan.validate(s.len(), c.n_layers, d).map_err(GpuError::Model)?;
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(GpuError::Model(personascope_model::ModelError::TokenOutOfRange {
                    id,
                    vocab: c.vocab_size,
                }));
            }
            let (prefix_base, start) = match s.prefix {
                Some((p, len)) => {
                    let ok = p < i && wave.seqs[p].prefix.is_none() && wave.seqs[p].tokens.len() >= len;
                    if !ok {
                        return bad(format!(
                            "sequence {i} continues sequence {p}, which is not an earlier plain sequence of {len} tokens or more"
                        ));
                    }
                    (seqs[p].own_base, len)
                }
                None => (0, 0),
            };
            let rows = s.kv_rows();
            if kv + rows > max || start + rows > max {
                return Err(GpuError::Model(personascope_model::ModelError::ContextFull { needed: kv + rows, max }));
            }
            let own = start..s.len();
            let mut slots = Slots::default();
            let mut take = |n: usize| {
                let o = out;
                out += n;
                o
            };
            if let Some(Span { positions, layers: ls }) = &s.plan.capture {
                let (r, ls) = (overlap(positions, &own), distinct(ls));
                slots.capture = Some((take(r.len() * ls.len() * d), r, ls));
            }
            if let Some(Span { positions, layers: ls }) = &s.plan.mean {
                let (n, ls) = (overlap(positions, &own).len(), distinct(ls));
                slots.mean = Some((take(ls.len() * d), ls, n));
            }
            if let (Some(r), true) = (&s.plan.project, traits > 0) {
                let r = overlap(r, &own);
                slots.project = Some((take(r.len() * traits * layers), r));
            }
            if let Some(r) = &s.plan.logprobs {
                let r = overlap(r, &own);
                slots.logprobs = Some((take(r.len()), r));
            }
            let generate = match &s.generate {
                Some((params, _)) => {
                    params.validate().map_err(GpuError::Model)?;
                    let base = hist;
                    hist += max;
                    let mut all: Vec<u32> = match s.prefix {
                        Some((p, len)) => wave.seqs[p].tokens[..len].to_vec(),
                        None => Vec::new(),
                    };
                    all.extend_from_slice(&s.tokens);
                    self.write_history(base, &all);
                    Some((params.clone(), base))
                }
                None => None,
            };
            seqs.push(Seq {
                start,
                tokens: s.tokens.clone(),
                plan: s.plan.clone(),
                own_base: kv as u32,
                prefix_base,
                len: start,
                kv_end: kv + rows,
                slots,
                generate,
            });
            kv += rows;
        }
        if out > self.options.out_floats {
            return bad(format!("a wave returning {out} values (at most {})", self.options.out_floats));
        }
        let blocks = wave_blocks(wave, self.config.n_layers);
        self.wave =
            WaveState { seqs, blocks, logits_row: vec![0; wave.seqs.len()], pending: VecDeque::new(), next_slot: 0 };
        self.clear_out(out);
        Ok(out)
    }

    /// The call plan of wave rows `rows` ((sequence, own token index) pairs, grouped by sequence).
    fn prefill_call(&self, rows: &[(usize, usize)]) -> Result<Call> {
        let w = &self.wave;
        let d = self.config.d_model;
        let (layers, traits, h) = (self.layers(), self.traits(), self.options.head_rows);
        let projected = self.projected_layers(w.blocks);
        let mut lists = Lists::new(self.layout, rows.len() as u32);
        let mut table = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        let mut logprob_rows: Vec<[u32; 3]> = Vec::new();
        let mut gen_rows: Vec<(usize, usize)> = Vec::new();
        for (r, &(s, i)) in rows.iter().enumerate() {
            let seq = &w.seqs[s];
            let pos = seq.start + i;
            table.push(seq.row(s, pos));
            tokens.push(seq.tokens[i]);
            if let Some((off, range, ls)) = &seq.slots.capture {
                if range.contains(&pos) {
                    for (li, &l) in ls.iter().enumerate().filter(|(_, l)| **l <= w.blocks) {
                        let at = off + ((pos - range.start) * ls.len() + li) * d;
                        lists.push(List::Capture(l), &[r as u32, at as u32]);
                    }
                }
            }
            if let Some((off, range)) = &seq.slots.project {
                if range.contains(&pos) {
                    let at = off + (pos - range.start) * traits * layers;
                    for &l in &projected {
                        lists.push(List::Project(l), &[r as u32, at as u32]);
                    }
                }
            }
            if let Some((off, range)) = &seq.slots.logprobs {
                if range.contains(&(pos + 1)) {
                    let target = seq.tokens[pos + 1 - seq.start];
                    logprob_rows.push([r as u32, target, (off + pos + 1 - range.start) as u32]);
                }
            }
            if seq.generate.is_some() && pos + 1 == seq.start + seq.tokens.len() {
                gen_rows.push((r, s));
            }
        }
        // Runs of consecutive rows of one sequence inside its mean range.
        let mut r = 0;
        while r < rows.len() {
            let s = rows[r].0;
            let seq = &w.seqs[s];
            let mut end = r;
            while end < rows.len() && rows[end].0 == s {
                end += 1;
            }
            if let (Some((off, ls, _)), Some(m)) = (&seq.slots.mean, &seq.plan.mean) {
                let in_range: Vec<usize> =
                    (r..end).filter(|&q| m.positions.contains(&(seq.start + rows[q].1))).collect();
                if let (Some(&a), Some(&b)) = (in_range.first(), in_range.last()) {
                    for (li, &l) in ls.iter().enumerate().filter(|(_, l)| **l <= w.blocks) {
                        lists.push(List::Sum(l), &[a as u32, (b + 1 - a) as u32, (off + li * d) as u32, 0]);
                    }
                }
            }
            r = end;
        }
        let mut chunks = Vec::new();
        let mut gen_seqs = Vec::new();
        if !gen_rows.is_empty() {
            // The generating sequences' last rows land in their logits rows, which follow the wave order.
            let gen_index = |s: usize| w.seqs[..s].iter().filter(|q| q.generate.is_some()).count();
            let row0 = gen_index(gen_rows[0].1);
            for (i, &(r, s)) in gen_rows.iter().enumerate() {
                if gen_index(s) != row0 + i {
                    return Err(GpuError::Unsupported("generating sequences out of order in a call".into()));
                }
                lists.push(List::Head(0), &[r as u32, (i * d) as u32]);
                gen_seqs.push(s);
            }
            chunks.push(ChunkPlan { rows: gen_rows.len() as u32, row0: row0 as u32, logprobs: 0 });
        } else {
            for (c, chunk) in logprob_rows.chunks(h).enumerate() {
                for (i, &[r, target, off]) in chunk.iter().enumerate() {
                    lists.push(List::Head(c), &[r, (i * d) as u32]);
                    lists.push(List::Logprob(c), &[i as u32, target, off, 0]);
                }
                chunks.push(ChunkPlan { rows: chunk.len() as u32, row0: 0, logprobs: chunk.len() as u32 });
            }
        }
        Ok((table, tokens, CallPlan { rows: rows.len() as u32, blocks: w.blocks, sample: 0, lists, chunks }, gen_seqs))
    }

    /// The wave's rows in order, as (sequence, own token index).
    fn wave_rows(&self) -> Vec<(usize, usize)> {
        self.wave.seqs.iter().enumerate().flat_map(|(s, q)| (0..q.tokens.len()).map(move |i| (s, i))).collect()
    }

    /// Runs every row of the wave in calls of `batch` rows; with a profiler, every dispatch is timed.
    async fn run_rows(&mut self, mut prof: Option<&mut Profiler>) -> Result<Vec<(&'static str, f64)>> {
        let all = self.wave_rows();
        let mut timings = Vec::new();
        for chunk in all.chunks(self.options.batch.max(1)) {
            let (table, tokens, call, gen_seqs) = self.prefill_call(chunk)?;
            match prof.as_deref_mut() {
                None => {
                    self.submit_call(&table, Some(&tokens), &call, None)?;
                }
                Some(p) => {
                    self.submit_profiled(&table, Some(&tokens), &call, p)?;
                    timings.extend(p.read(&self.gpu).await?);
                }
            }
            for (i, &s) in gen_seqs.iter().enumerate() {
                self.wave.logits_row[s] = call.chunks[0].row0 + i as u32;
            }
            for &(s, _) in chunk {
                self.wave.seqs[s].len += 1;
            }
        }
        Ok(timings)
    }

    /// [`GpuModel::submit_call`] with every dispatch in its own timed pass.
    fn submit_profiled(
        &mut self,
        rows: &[Row],
        tokens: Option<&[u32]>,
        call: &CallPlan,
        prof: &mut Profiler,
    ) -> Result<()> {
        let q = &self.gpu.queue;
        q.write_buffer(&self.buffers.rows, 0, bytemuck::cast_slice(rows));
        if let Some(t) = tokens {
            q.write_buffer(&self.buffers.tokens, 0, bytemuck::cast_slice(t));
        }
        q.write_buffer(&self.buffers.lists, 0, bytemuck::cast_slice(&call.lists.words()));
        self.set_call_uniforms(rows.len(), &call.chunks)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.record_call(&mut enc, call, Some(&mut *prof))?;
        prof.finish(&mut enc);
        self.gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Reads the wave's results back and splits them per sequence.
    async fn collect(&mut self, used: usize) -> Result<Vec<PlanOut>> {
        let words: Vec<f32> = if used > 0 {
            let bytes = (used * 4) as u64;
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&self.buffers.out, 0, &self.buffers.out_staging, 0, bytes.div_ceil(4) * 4);
            self.submits += 1;
            let sub = self.gpu.queue.submit([enc.finish()]);
            let raw = read_staging_after(&self.gpu, &self.buffers.out_staging, bytes, Some(sub)).await?;
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        } else {
            Vec::new()
        };
        self.gpu.health()?;
        let (d, layers, traits) = (self.config.d_model, self.layers(), self.traits());
        let blocks = self.wave.blocks;
        let at = |o: usize, n: usize| {
            words.get(o..o + n).map(<[f32]>::to_vec).ok_or_else(|| GpuError::Readback {
                what: "wave results".into(),
                msg: format!("{} values, {} expected", words.len(), o + n),
            })
        };
        let mut outs = Vec::with_capacity(self.wave.seqs.len());
        for seq in &self.wave.seqs {
            let mut out = PlanOut::default();
            if let Some((off, range, ls)) = &seq.slots.capture {
                for (i, p) in range.clone().enumerate() {
                    let mut rows: Layers = vec![Vec::new(); layers];
                    for (li, &l) in ls.iter().enumerate().filter(|(_, l)| **l <= blocks) {
                        rows[l] = at(off + (i * ls.len() + li) * d, d)?;
                    }
                    out.captured.push((p, rows));
                }
            }
            if let Some((off, ls, n)) = &seq.slots.mean {
                let mut mean: Layers = vec![Vec::new(); layers];
                for (li, &l) in ls.iter().enumerate() {
                    let sums = if l <= blocks { at(off + li * d, d)? } else { vec![0.0; d] };
                    mean[l] = if *n == 0 { vec![0.0; d] } else { sums.iter().map(|x| x / *n as f32).collect() };
                }
                out.mean = Some(mean);
            }
            if let Some((off, range)) = &seq.slots.project {
                for (i, p) in range.clone().enumerate() {
                    let raw = at(off + i * traits * layers, traits * layers)?;
                    out.scores.push((p, self.scores_of(&raw, blocks)));
                }
            }
            if let Some((off, range)) = &seq.slots.logprobs {
                out.logprobs = at(*off, range.len())?;
            }
            outs.push(out);
        }
        Ok(outs)
    }

    /// Scores [trait][layer] from a [traits * layers] block, NaN where no trait direction is or no block ran.
    fn scores_of(&self, raw: &[f32], blocks: usize) -> Vec<Vec<f32>> {
        let layers = self.layers();
        let Some(m) = &self.monitor else { return Vec::new() };
        (0..m.traits)
            .map(|t| {
                (0..layers)
                    .map(|l| {
                        let on = l <= blocks && m.packed.on(t, l, layers);
                        if on {
                            raw.get(t * layers + l).copied().unwrap_or(f32::NAN)
                        } else {
                            f32::NAN
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Records and submits one decode step for `active` (wave indices).
    fn step_call(&mut self, active: &[usize], step: u32, prof: Option<&mut Profiler>) -> Result<Option<Pending>> {
        let (d, layers, traits, h) = (self.config.d_model, self.layers(), self.traits(), self.options.head_rows);
        let vocab = self.config.vocab_size;
        if active.is_empty() || active.len() > h {
            return Err(GpuError::Unsupported(format!("a decode step of {} sequences (1..={h})", active.len())));
        }
        let base = self.options.out_floats;
        let scores_base = base + h * sample::OUT_WORDS as usize;
        let projected_layers = self.projected_layers(self.wave.blocks);
        let mut params = Vec::with_capacity(active.len());
        let mut table = Vec::with_capacity(active.len());
        let mut lists = Lists::new(self.layout, active.len() as u32);
        let mut projected = Vec::with_capacity(active.len());
        for (j, &s) in active.iter().enumerate() {
            let seq =
                self.wave.seqs.get(s).ok_or_else(|| GpuError::Unsupported(format!("no sequence {s} in the wave")))?;
            let Some((sampling, hist)) = &seq.generate else {
                return Err(GpuError::Unsupported(format!("sequence {s} does not generate")));
            };
            if seq.own_base as usize + (seq.len - seq.start) >= seq.kv_end {
                return Err(GpuError::Model(personascope_model::ModelError::ContextFull {
                    needed: seq.len + 1,
                    max: seq.len,
                }));
            }
            let mut p = sample::Params::new(sampling, vocab as u32)?;
            p.logits_offset = self.wave.logits_row[s] * vocab as u32;
            p.ctx_start = *hist as u32;
            p.ctx_len = seq.len as u32;
            p.write_index = (*hist + seq.len) as u32;
            p.out_offset = (base + j * sample::OUT_WORDS as usize) as u32;
            p.step = step;
            p.token_index = j as u32;
            p.work_offset = (j * vocab) as u32;
            params.push(p);
            table.push(seq.row(s, seq.len));
            lists.push(List::Head(0), &[j as u32, (j * d) as u32]);
            let proj = traits > 0 && seq.plan.project.as_ref().is_some_and(|r| r.contains(&seq.len));
            if proj {
                for &l in &projected_layers {
                    lists.push(List::Project(l), &[j as u32, (scores_base + j * traits * layers) as u32]);
                }
            }
            projected.push(proj);
        }
        let call = CallPlan {
            rows: active.len() as u32,
            blocks: self.wave.blocks,
            sample: active.len() as u32,
            lists,
            chunks: vec![ChunkPlan { rows: active.len() as u32, row0: 0, logprobs: 0 }],
        };
        self.write_sample_params(&params);
        let words = step_words(h, traits, layers);
        let pending = match prof {
            Some(p) => {
                self.submit_profiled(&table, None, &call, p)?;
                None
            }
            None => {
                if self.wave.pending.len() >= 2 {
                    return Err(GpuError::Unsupported("more than two decode steps in flight".into()));
                }
                let slot = self.wave.next_slot;
                self.wave.next_slot = 1 - slot;
                // Handles (wgpu buffers are reference-counted), so the call can borrow the model mutably.
                let dst = self.buffers.step_staging[slot].clone();
                let src = self.buffers.out.clone();
                let submission =
                    self.submit_call(&table, None, &call, Some((&src, (base * 4) as u64, &dst, (words * 4) as u64)))?;
                Some(Pending { slot, active: active.to_vec(), projected, submission })
            }
        };
        for (j, &s) in active.iter().enumerate() {
            self.wave.logits_row[s] = j as u32;
            self.wave.seqs[s].len += 1;
        }
        Ok(pending)
    }

    /// Greedy logits of the last token of `tokens` (a fresh sequence): the prompt pass of a generation.
    pub async fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let wave = Wave {
            seqs: vec![personascope_model::WaveSeq {
                prefix: None,
                tokens: tokens.to_vec(),
                plan: Plan::default(),
                generate: Some((SamplingParams::greedy(), 0)),
            }],
            monitor: None,
        };
        self.prefill(&wave).await?;
        self.read_logits_row(0).await
    }

    /// Every residual index's row of the last token of `tokens`: [N+1][d].
    pub async fn residuals(&mut self, tokens: &[u32]) -> Result<Layers> {
        let n = self.config.n_layers;
        let plan = Plan {
            capture: Some(Span::all_layers(tokens.len().saturating_sub(1)..tokens.len(), n)),
            ..Default::default()
        };
        let wave = Wave {
            seqs: vec![personascope_model::WaveSeq { prefix: None, tokens: tokens.to_vec(), plan, generate: None }],
            monitor: None,
        };
        let mut outs = self.prefill(&wave).await?;
        outs.pop()
            .and_then(|o| o.captured.into_iter().next())
            .map(|(_, r)| r)
            .ok_or_else(|| GpuError::Readback { what: "residuals".into(), msg: "no row came back".into() })
    }

    /// A reply to `prompt_ids` with no steering or monitoring, streaming each token's text through `on_token`.
    pub async fn generate(
        &mut self,
        prompt_ids: &[u32],
        max_tokens: usize,
        params: &SamplingParams,
        on_token: &mut dyn FnMut(u32, &str) -> Flow,
    ) -> Result<schedule::GenOut> {
        let spec = GenSpec { prompt: prompt_ids.to_vec(), max_tokens, sampling: params.clone(), plan: Plan::default() };
        let mut out =
            schedule::generate_many(self, &[spec], None, &mut |t| on_token(t.id, t.text), &mut |_| Flow::Continue)
                .await?;
        out.pop().ok_or_else(|| GpuError::Unsupported("no reply".into()))
    }
}

/// Per-dispatch GPU times of `prompt`'s prefill (one generating sequence) and one decode step, with `plan` (steering,
/// projections) and `monitor` in place.
pub(crate) async fn profile(
    g: &mut GpuModel,
    prompt: &[u32],
    plan: Plan,
    monitor: Option<Arc<Units>>,
    prof: &mut Profiler,
) -> Result<(Vec<(&'static str, f64)>, Vec<(&'static str, f64)>)> {
    let wave = Wave {
        seqs: vec![personascope_model::WaveSeq {
            prefix: None,
            tokens: prompt.to_vec(),
            plan,
            generate: Some((SamplingParams::greedy(), 1)),
        }],
        monitor,
    };
    g.begin_wave(&wave)?;
    let prefill = g.run_rows(Some(prof)).await?;
    g.step_call(&[0], 0, Some(prof))?;
    let decode = prof.read(&g.gpu).await?;
    Ok((prefill, decode))
}

impl Engine for GpuModel {
    type Error = GpuError;

    fn config(&self) -> &Config {
        &self.config
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn template(&self) -> &ChatTemplate {
        &self.template
    }
    fn model_name(&self) -> &str {
        &self.name
    }
    fn max_positions(&self) -> usize {
        self.options.max_positions
    }
    fn limits(&self) -> Limits {
        Limits {
            kv_rows: self.options.max_positions,
            seqs: 4096,
            gen_seqs: self.options.head_rows,
            out_floats: self.options.out_floats,
            traits: self.options.max_traits,
        }
    }

    async fn prefill(&mut self, wave: &Wave) -> Result<Vec<PlanOut>> {
        let used = self.begin_wave(wave)?;
        self.run_rows(None).await?;
        self.collect(used).await
    }

    fn submit_step(&mut self, active: &[usize], step: u32) -> Result<()> {
        if let Some(p) = self.step_call(active, step, None)? {
            self.wave.pending.push_back(p);
        }
        Ok(())
    }

    async fn finish_step(&mut self) -> Result<Vec<StepToken>> {
        let p = self
            .wave
            .pending
            .pop_front()
            .ok_or_else(|| GpuError::Unsupported("no decode step was submitted".into()))?;
        let (layers, traits, h) = (self.layers(), self.traits(), self.options.head_rows);
        let words = step_words(h, traits, layers);
        let bytes =
            read_staging_after(&self.gpu, &self.buffers.step_staging[p.slot], (words * 4) as u64, Some(p.submission))
                .await?;
        self.gpu.health()?;
        let w: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let scores_base = h * sample::OUT_WORDS as usize;
        let blocks = self.wave.blocks;
        let mut out = Vec::with_capacity(p.active.len());
        for (j, (&s, &proj)) in p.active.iter().zip(&p.projected).enumerate() {
            let rec = sample::Record::from_words(w.get(j * sample::OUT_WORDS as usize..).unwrap_or(&[]))
                .ok_or_else(|| GpuError::Readback { what: "sample record".into(), msg: "short read".into() })?;
            let scores = if proj {
                let at = scores_base + j * traits * layers;
                let raw: Vec<f32> =
                    w.get(at..at + traits * layers).unwrap_or(&[]).iter().map(|&b| f32::from_bits(b)).collect();
                self.scores_of(&raw, blocks)
            } else {
                Vec::new()
            };
            out.push(StepToken { seq: s, token: rec.token, scores });
        }
        Ok(out)
    }

    fn counters(&self) -> (u64, u64) {
        (self.submits, self.dispatches)
    }
}
