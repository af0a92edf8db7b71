//! Model weights: quantized matrices kept as stored in the file, small vectors dequantized to f32.

use crate::config::Config;
use crate::gemm;
use crate::{ModelError, Result};
use personascope_gguf::{dequantize, dot_row, GgmlType, Gguf};
use std::ops::Range;

/// A matrix of `rows` x `cols` stored in a GGML type; row r is `cols` contiguous elements (GGML dims [cols, rows]).
/// It refers to its bytes by range so the model can own the file's bytes without self-reference.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Range<usize>,
    pub row_bytes: usize,
}

impl QMatrix {
    fn load(g: &Gguf, name: &str, cols: usize, rows: usize) -> Result<Self> {
        let t = g.tensor(name).ok_or_else(|| ModelError::Tensor { name: name.into(), msg: "missing".into() })?;
        let is = |dim: u64, want: usize| usize::try_from(dim) == Ok(want);
        let ok = match t.dims.as_slice() {
            [c, r] => is(*c, cols) && is(*r, rows),
            [c] => is(*c, cols) && rows == 1,
            _ => false,
        };
        if !ok {
            return Err(ModelError::Tensor {
                name: name.into(),
                msg: format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
            });
        }
        let row_bytes = t.ty.bytes_for(cols as u64).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            msg: format!("row length {cols} is not a whole number of {} blocks", t.ty),
        })? as usize;
        Ok(QMatrix { ty: t.ty, rows, cols, bytes: t.start..t.start + t.len, row_bytes })
    }

    pub fn row<'a>(&self, file: &'a [u8], r: usize) -> &'a [u8] {
        let start = self.bytes.start + r * self.row_bytes;
        &file[start..start + self.row_bytes]
    }

    /// out[t, r] = sum_c W[r, c] x[t, c] for `n` = x.len() / cols input rows.
    ///
    /// For one input row each weight row is dotted straight from its stored blocks; for several (prompt
    /// processing is matrix-matrix), the weights are dequantized a chunk of rows at a time and multiplied in
    /// register tiles (`gemm`), each dequantized row serving every input row.
    pub fn matmul(&self, file: &[u8], x: &[f32], out: &mut [f32]) {
        let n = x.len() / self.cols;
        debug_assert_eq!(out.len(), n * self.rows);
        if n == 1 {
            par_rows(out, 64, |r0, chunk| {
                for (i, o) in chunk.iter_mut().enumerate() {
                    *o = dot_row(self.ty, self.row(file, r0 + i), x);
                }
            });
            return;
        }
        gemm::matmul(gemm::Kernel::detect(), self.ty, self.rows, self.cols, |r| self.row(file, r), x, out);
    }

    /// The former n > 1 path (each weight row dequantized, then one `dot_f32` per input row, into a [rows, n]
    /// buffer transposed at the end): the baseline that the `gemm` tests and microbenchmark compare against.
    #[cfg(test)]
    pub(crate) fn matmul_reference(&self, file: &[u8], x: &[f32], out: &mut [f32]) {
        let n = x.len() / self.cols;
        debug_assert_eq!(out.len(), n * self.rows);
        let mut tmp = vec![0f32; self.rows * n];
        par_rows(&mut tmp, 16 * n, |flat0, chunk| {
            let r0 = flat0 / n;
            let mut w = vec![0f32; self.cols];
            for (i, out_row) in chunk.chunks_mut(n).enumerate() {
                if dequantize(self.ty, self.row(file, r0 + i), &mut w).is_err() {
                    out_row.fill(f32::NAN);
                    continue;
                }
                for (t, o) in out_row.iter_mut().enumerate() {
                    *o = personascope_gguf::dot_f32(&w, &x[t * self.cols..(t + 1) * self.cols]);
                }
            }
        });
        for r in 0..self.rows {
            for t in 0..n {
                out[t * self.rows + r] = tmp[r * n + t];
            }
        }
    }

    /// Row `r` dequantized (used for the embedding gather).
    pub fn dequantize_row(&self, file: &[u8], r: usize, out: &mut [f32]) -> Result<()> {
        dequantize(self.ty, self.row(file, r), out).map_err(ModelError::from)
    }
}

/// Runs `f(first_index, chunk)` over chunks of `out`, in parallel where the `parallel` feature is on.
fn par_rows(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let chunk = chunk.max(1);
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i * chunk, c));
    }
    #[cfg(not(feature = "parallel"))]
    for (i, c) in out.chunks_mut(chunk).enumerate() {
        f(i * chunk, c);
    }
}

fn vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g.tensor(name).ok_or_else(|| ModelError::Tensor { name: name.into(), msg: "missing".into() })?;
    if t.dims.as_slice() != [len as u64] {
        return Err(ModelError::Tensor { name: name.into(), msg: format!("shape {:?}, expected [{len}]", t.dims) });
    }
    let v = g.tensor_f32(name)?;
    // A NaN or infinite norm weight or bias loads fine and then silently turns every logit into NaN.
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ModelError::Tensor { name: name.into(), msg: format!("element {i} is {}", v[i]) });
    }
    Ok(v)
}

pub struct Block {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix,
    pub wk: QMatrix,
    pub wv: QMatrix,
    /// Q, K, V biases (Qwen2 only).
    pub bias: Option<[Vec<f32>; 3]>,
    pub wo: QMatrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: QMatrix,
    pub w_up: QMatrix,
    pub w_down: QMatrix,
}

pub struct Weights {
    /// [vocab, d]
    pub token_embd: QMatrix,
    pub blocks: Vec<Block>,
    pub output_norm: Vec<f32>,
    /// [vocab, d]; the token embedding when tied.
    pub lm_head: QMatrix,
    /// Llama 3 RoPE frequency divisors, one per rotated pair.
    pub rope_freqs: Option<Vec<f32>>,
}

/// Checks every tensor the model reads against `c` (presence, shape, type, finite norm weights and biases), the
/// same way the CPU loader does: the GPU loader calls it before it uploads anything.
pub fn check_tensors(g: &Gguf, c: &Config) -> Result<()> {
    Weights::load(g, c).map(|_| ())
}

impl Weights {
    pub fn load(g: &Gguf, c: &Config) -> Result<Self> {
        let d = c.d_model;
        let token_embd = QMatrix::load(g, "token_embd.weight", d, c.vocab_size)?;
        // Not `with_capacity(n_layers)`: the count comes from the file, and each block is only kept once its
        // tensors are found.
        let mut blocks = Vec::new();
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let bias = if c.qkv_bias {
                Some([
                    vector(g, &n("attn_q.bias"), c.q_dim())?,
                    vector(g, &n("attn_k.bias"), c.kv_dim())?,
                    vector(g, &n("attn_v.bias"), c.kv_dim())?,
                ])
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: vector(g, &n("attn_norm.weight"), d)?,
                wq: QMatrix::load(g, &n("attn_q.weight"), d, c.q_dim())?,
                wk: QMatrix::load(g, &n("attn_k.weight"), d, c.kv_dim())?,
                wv: QMatrix::load(g, &n("attn_v.weight"), d, c.kv_dim())?,
                bias,
                wo: QMatrix::load(g, &n("attn_output.weight"), c.q_dim(), d)?,
                ffn_norm: vector(g, &n("ffn_norm.weight"), d)?,
                w_gate: QMatrix::load(g, &n("ffn_gate.weight"), d, c.d_ff)?,
                w_up: QMatrix::load(g, &n("ffn_up.weight"), d, c.d_ff)?,
                w_down: QMatrix::load(g, &n("ffn_down.weight"), c.d_ff, d)?,
            });
        }
        let lm_head =
            if c.tied_embeddings { token_embd.clone() } else { QMatrix::load(g, "output.weight", d, c.vocab_size)? };
        let rope_freqs = match g.tensor("rope_freqs.weight") {
            Some(_) => {
                let f = vector(g, "rope_freqs.weight", c.rope_dim / 2)?;
                if let Some(i) = f.iter().position(|&x| x <= 0.0) {
                    return Err(ModelError::Tensor {
                        name: "rope_freqs.weight".into(),
                        msg: format!("element {i} is {}, but frequency divisors must be positive", f[i]),
                    });
                }
                Some(f)
            }
            None => None,
        };
        Ok(Weights { token_embd, blocks, output_norm: vector(g, "output_norm.weight", d)?, lm_head, rope_freqs })
    }
}
