//! The CPU reference forward pass. It is the specification the GPU engine is tested against, so it favours
//! clarity: f32 activations, one function from tokens to logits, every buffer named with its shape.

use crate::config::Config;
use crate::hooks::ResidualHook;
use crate::ops;
use crate::ops::{add, add_bias, attention, rms_norm, silu_gate};
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
        Ok(Model { config, tokenizer, template, name, weights, inv_freq, file })
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
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        if cache.k.len() != c.n_layers {
            *cache = self.new_cache();
        }
        let file = &self.file[..];
        let w = &self.weights;

        let mut x = vec![0f32; n * d]; // [n, d] residual stream
        for (row, &id) in x.chunks_exact_mut(d).zip(tokens) {
            w.token_embd.dequantize_row(file, id as usize, row)?;
        }
        hook.on_residual(0, pos0, &mut x, d);

        let mut xn = vec![0f32; n * d]; // [n, d] normalized input of a sub-layer
        let mut q = vec![0f32; n * c.q_dim()]; // [n, n_heads * head_dim]
        let mut k = vec![0f32; n * c.kv_dim()]; // [n, n_kv_heads * head_dim]
        let mut v = vec![0f32; n * c.kv_dim()];
        let mut att = vec![0f32; n * c.q_dim()]; // [n, n_heads * head_dim] attention output
        let mut proj = vec![0f32; n * d]; // [n, d] output of attn_output / ffn_down
        let mut gate = vec![0f32; n * c.d_ff]; // [n, d_ff]
        let mut up = vec![0f32; n * c.d_ff];

        for (l, b) in w.blocks.iter().enumerate() {
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
            self.rope(&mut q, c.n_heads, pos0);
            self.rope(&mut k, c.n_kv_heads, pos0);
            cache.k[l].extend_from_slice(&k);
            cache.v[l].extend_from_slice(&v);
            attention(c.n_heads, c.n_kv_heads, c.head_dim, &q, &cache.k[l], &cache.v[l], pos0, &mut att);
            b.wo.matmul(file, &att, &mut proj);
            add(&mut x, &proj);

            // Feed-forward sub-layer: down(silu(gate(x)) * up(x)).
            rms_norm(&x, &b.ffn_norm, c.rms_eps, &mut xn);
            b.w_gate.matmul(file, &xn, &mut gate);
            b.w_up.matmul(file, &xn, &mut up);
            silu_gate(&mut gate, &up);
            b.w_down.matmul(file, &gate, &mut proj);
            add(&mut x, &proj);

            hook.on_residual(l + 1, pos0, &mut x, d);
        }
        cache.len += n;

        let rows = match logits {
            Logits::Last => &x[(n - 1) * d..],
            Logits::All => &x[..],
            Logits::From(i) => &x[i.min(n - 1) * d..],
        };
        let mut normed = vec![0f32; rows.len()];
        rms_norm(rows, &w.output_norm, c.rms_eps, &mut normed);
        Ok(self.lm_head(&w.lm_head, &normed))
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
