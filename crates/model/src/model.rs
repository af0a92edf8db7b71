//! The CPU reference forward pass. It is the specification the GPU engine is tested against, so it favours
//! clarity: f32 activations, one function from tokens to logits, every buffer named with its shape.

use crate::config::Config;
use crate::hooks::ResidualHook;
use crate::ops;
use crate::ops::{add, add_bias, rms_norm, silu_gate};
use crate::weights::{QMatrix, Weights};
use crate::{ChatTemplate, ModelError, Result, Tokenizer};
use personascope_gguf::Gguf;

/// Which positions' logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's: `[vocab]`.
    Last,
    /// Every token's: `[n, vocab]` (perplexity, log-probabilities of given continuations).
    All,
    /// The tokens from index `i` of this call on: `[n - i, vocab]` (log-probabilities of a continuation without
    /// paying the LM head for the prompt rows). Clamped to the last token.
    From(usize),
}

/// Keys and values of every processed position, per block: `k[l]` is `[len, kv_dim]`. Grows as tokens are
/// processed, so a short chat does not reserve the whole context.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Positions processed so far; the next token gets this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions `len..` (e.g. to re-run a reply from the same prompt).
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        if len < self.len {
            for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                buf.truncate(len * kv_dim);
            }
            self.len = len;
        }
    }
}

/// Rows of one sequence in a ragged batch: consecutive positions from `pos0`.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub pos0: usize,
    pub rows: std::ops::Range<usize>,
}

/// Where the blocks keep keys and values of the segments of a call.
pub(crate) trait KvStore: Sync {
    /// Appends the rotated keys and the values of segment `seg`'s rows at block `layer`.
    fn append(&mut self, seg: usize, layer: usize, k: &[f32], v: &[f32]);
    /// The keys and values segment `seg` sees at block `layer`, in position order, as up to two parts (a shared
    /// prefix's, then its own).
    fn parts(&self, seg: usize, layer: usize) -> [(&[f32], &[f32]); 2];
}

impl KvStore for KvCache {
    fn append(&mut self, _: usize, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }
    fn parts(&self, _: usize, layer: usize) -> [(&[f32], &[f32]); 2] {
        [(&self.k[layer], &self.v[layer]), (&[], &[])]
    }
}

/// An error naming the first non-finite logit of a probe pass, if any.
pub fn broken_logits(logits: &[f32]) -> Result<()> {
    match logits.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(ModelError::Config(format!(
            "the model is broken: one forward pass gives a non-finite logit ({} for token {i}); the weights or \
             their norms and scales hold values the file format allows but no working model has",
            logits[i]
        ))),
    }
}

/// A loaded model: configuration, weights (kept quantized, as stored in the file), tokenizer and chat template.
pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// `general.name`, or the architecture when absent.
    pub name: String,
    weights: Weights,
    /// RoPE inverse frequency of each rotated pair, Llama 3 divisors applied.
    inv_freq: Vec<f32>,
    /// The GGUF file; weight matrices index into it.
    file: Vec<u8>,
}

impl Model {
    /// Loads a model from the bytes of a GGUF file (in the browser they arrive as an `ArrayBuffer`).
    pub fn from_bytes(file: Vec<u8>) -> Result<Self> {
        let g = Gguf::parse(&file)?;
        let config = Config::from_gguf(&g)?;
        let weights = Weights::load(&g, &config)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::Config(format!(
                "tokenizer has {} tokens but the embedding only {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let template = ChatTemplate::from_gguf(&g)?;
        let name = g.get("general.name").and_then(|v| v.as_str()).unwrap_or(config.arch.name()).to_string();
        let inv_freq = ops::rope_inv_freq(&config, weights.rope_freqs.as_deref());
        let model = Model { config, tokenizer, template, name, weights, inv_freq, file };
        model.check_forward()?;
        Ok(model)
    }

    /// One forward pass of one token (BOS, or id 0), whose logits must all be finite: weights that pass every
    /// other check but give NaN or infinite logits (a broken quantization, say) fail the load here instead of
    /// giving empty replies later.
    pub fn check_forward(&self) -> Result<()> {
        let token = self.tokenizer.bos_id().unwrap_or(0);
        let logits = self.forward(&mut self.new_cache(), &[token], &mut crate::NoHook, Logits::Last)?;
        broken_logits(&logits)
    }

    /// Reads and loads a GGUF file from disk.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(bytes).map_err(|e| e.in_file(path))
    }

    pub fn new_cache(&self) -> KvCache {
        let n = self.config.n_layers;
        KvCache { k: vec![Vec::new(); n], v: vec![Vec::new(); n], len: 0 }
    }

    /// Size of the GGUF file in bytes.
    pub fn file_size(&self) -> usize {
        self.file.len()
    }

    /// Runs `tokens` (at positions `cache.len()..`) through the model, extending the cache, calling `hook` at
    /// every residual index (0 = embeddings, k = output of block k-1), and returns the logits asked for.
    ///
    /// This is the single-sequence entry with a closure hook, for research and the golden tests; the persona
    /// methods describe their passes as [`crate::plan::Plan`]s and run them through [`crate::cpu::CpuEngine`],
    /// which shares the same block code ([`Model::run_blocks`]).
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        hook: &mut dyn ResidualHook,
        logits: Logits,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (d, n, pos0) = (c.d_model, tokens.len(), cache.len);
        if n == 0 {
            return Err(ModelError::Config("forward called with no tokens".into()));
        }
        if pos0 + n > c.context_length {
            return Err(ModelError::ContextFull { needed: pos0 + n, max: c.context_length });
        }
        if cache.k.len() != c.n_layers {
            *cache = self.new_cache();
        }
        let segs = [Segment { pos0, rows: 0..n }];
        let x =
            self.run_blocks(tokens, &segs, cache, c.n_layers, &mut |layer, x| hook.on_residual(layer, pos0, x, d))?;
        cache.len += n;
        let rows = match logits {
            Logits::Last => &x[(n - 1) * d..],
            Logits::All => &x[..],
            Logits::From(i) => &x[i.min(n - 1) * d..],
        };
        Ok(self.head(rows))
    }

    /// The final norm and LM head over `rows` ([m, d]): logits [m, vocab].
    pub(crate) fn head(&self, rows: &[f32]) -> Vec<f32> {
        let mut normed = vec![0f32; rows.len()];
        rms_norm(rows, &self.weights.output_norm, self.config.rms_eps, &mut normed);
        self.lm_head(&self.weights.lm_head, &normed)
    }

    /// The first `blocks` blocks over `tokens`, a ragged batch: segment i holds rows `segs[i].rows` (consecutive
    /// positions from `segs[i].pos0`) of one sequence whose keys and values `kv` keeps. Every row's K/V is appended
    /// before any row attends, so a segment may read the keys of another segment of the same call (a shared
    /// prefix). `hook(L, x)` sees all rows at every residual index L in `0..=blocks`. Returns the residual stream
    /// [n, d] after the last block run.
    pub(crate) fn run_blocks(
        &self,
        tokens: &[u32],
        segs: &[Segment],
        kv: &mut dyn KvStore,
        blocks: usize,
        hook: &mut dyn FnMut(usize, &mut [f32]),
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (d, n) = (c.d_model, tokens.len());
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        let file = &self.file[..];
        let w = &self.weights;

        let mut x = vec![0f32; n * d]; // [n, d] residual stream
        for (row, &id) in x.chunks_exact_mut(d).zip(tokens) {
            w.token_embd.dequantize_row(file, id as usize, row)?;
        }
        hook(0, &mut x);

        let mut xn = vec![0f32; n * d]; // [n, d] normalized input of a sub-layer
        let mut q = vec![0f32; n * c.q_dim()]; // [n, n_heads * head_dim]
        let mut k = vec![0f32; n * c.kv_dim()]; // [n, n_kv_heads * head_dim]
        let mut v = vec![0f32; n * c.kv_dim()];
        let mut att = vec![0f32; n * c.q_dim()]; // [n, n_heads * head_dim] attention output
        let mut proj = vec![0f32; n * d]; // [n, d] output of attn_output / ffn_down
        let mut gate = vec![0f32; n * c.d_ff]; // [n, d_ff]
        let mut up = vec![0f32; n * c.d_ff];
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let heads = ops::Heads { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, hd: c.head_dim };
        // Per row: its segment and position.
        let mut row_seg = vec![(0usize, 0usize); n];
        for (i, s) in segs.iter().enumerate() {
            for (j, r) in s.rows.clone().enumerate() {
                if let Some(slot) = row_seg.get_mut(r) {
                    *slot = (i, s.pos0 + j);
                }
            }
        }

        for (l, b) in w.blocks.iter().take(blocks).enumerate() {
            // Attention sub-layer.
            rms_norm(&x, &b.attn_norm, c.rms_eps, &mut xn);
            b.wq.matmul(file, &xn, &mut q);
            b.wk.matmul(file, &xn, &mut k);
            b.wv.matmul(file, &xn, &mut v);
            if let Some([bq, bk, bv]) = &b.bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            for (i, s) in segs.iter().enumerate() {
                self.rope(&mut q[s.rows.start * qd..s.rows.end * qd], c.n_heads, s.pos0);
                self.rope(&mut k[s.rows.start * kvd..s.rows.end * kvd], c.n_kv_heads, s.pos0);
                kv.append(i, l, &k[s.rows.start * kvd..s.rows.end * kvd], &v[s.rows.start * kvd..s.rows.end * kvd]);
            }
            {
                let kv: &dyn KvStore = kv;
                let (q, row_seg) = (&q, &row_seg);
                ops::for_each_head(&mut att, c.head_dim, |idx, o| {
                    let (row, h) = (idx / c.n_heads, idx % c.n_heads);
                    let (seg, pos) = row_seg[row];
                    heads.attend(h, &q[row * qd..(row + 1) * qd], &kv.parts(seg, l), pos + 1, o);
                });
            }
            b.wo.matmul(file, &att, &mut proj);
            add(&mut x, &proj);

            // Feed-forward sub-layer: down(silu(gate(x)) * up(x)).
            rms_norm(&x, &b.ffn_norm, c.rms_eps, &mut xn);
            b.w_gate.matmul(file, &xn, &mut gate);
            b.w_up.matmul(file, &xn, &mut up);
            silu_gate(&mut gate, &up);
            b.w_down.matmul(file, &gate, &mut proj);
            add(&mut x, &proj);

            hook(l + 1, &mut x);
        }
        Ok(x)
    }

    fn lm_head(&self, head: &QMatrix, normed: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; normed.len() / self.config.d_model * head.rows];
        head.matmul(&self.file, normed, &mut out);
        out
    }

    /// RoPE inverse frequency of each rotated pair (Llama 3 divisors applied).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    fn rope(&self, x: &mut [f32], heads: usize, pos0: usize) {
        let c = &self.config;
        ops::rope(x, heads, c.head_dim, pos0, &self.inv_freq, c.rope_pairing, c.rope_linear_scale);
    }
}
