//! CPU dequantization of GGML blocks, and the row dot product the CPU forward pass is built on.
//!
//! Block layouts follow ggml (`ggml-common.h`); each decoder below works on one block and is checked against the
//! Python `gguf` package's dequantization on golden blocks (`tests/golden/dequant.json`).

use crate::{GgmlType, GgufError};
use half::{bf16, f16};

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `out.len()` elements of type `ty` from `data`, which must hold exactly that many elements.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    let n = out.len() as u64;
    let needed = ty.bytes_for(n).ok_or_else(|| GgufError::DataSize {
        what: "dequantize".into(),
        ty: ty.name(),
        count: n,
        needed: 0,
        got: data.len() as u64,
    })?;
    if needed != data.len() as u64 {
        return Err(GgufError::DataSize {
            what: "dequantize".into(),
            ty: ty.name(),
            count: n,
            needed,
            got: data.len() as u64,
        });
    }
    let decode = block_decoder(ty);
    for (block, dst) in data.chunks_exact(ty.type_size()).zip(out.chunks_exact_mut(ty.block_size())) {
        decode(block, dst);
    }
    Ok(())
}

/// Dot product of one stored row (`x.len()` elements of type `ty`) with `x`. The caller guarantees that `row`
/// holds exactly `x.len()` elements (the model checks every tensor's size at load); trailing data that does not
/// form a whole block is ignored rather than read out of bounds.
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for (checked just above).
        return unsafe { dot_row_avx2(ty, row, x) };
    }
    dot_row_impl(ty, row, x)
}

/// The same code compiled for AVX2 + FMA: twice the vector width of the x86-64 baseline (SSE2), picked at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_row_avx2(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    dot_row_impl(ty, row, x)
}

#[inline(always)]
fn dot_row_impl(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => {
            let mut acc = [0f32; 8];
            let (w_chunks, x_chunks) = (row.chunks_exact(32), x.chunks_exact(8));
            let (w_tail, x_tail) = (w_chunks.remainder(), x_chunks.remainder());
            for (w, xs) in w_chunks.zip(x_chunks) {
                for i in 0..8 {
                    let wi = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
                    acc[i] += wi * xs[i];
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (w, xi) in w_tail.chunks_exact(4).zip(x_tail) {
                sum += f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * xi;
            }
            sum
        }
        // Each type's block decoder is inlined into the loop, so decode and dot vectorize together.
        GgmlType::Q8_0 => decoded_blocks::<34, 32>(row, x, q8_0),
        GgmlType::Q4_0 => decoded_blocks::<18, 32>(row, x, q4_0),
        GgmlType::Q4_1 => decoded_blocks::<20, 32>(row, x, q4_1),
        GgmlType::Q5_0 => decoded_blocks::<22, 32>(row, x, q5_0),
        GgmlType::Q5_1 => decoded_blocks::<24, 32>(row, x, q5_1),
        GgmlType::Q4K => decoded_blocks::<144, QK_K>(row, x, q4_k),
        GgmlType::Q5K => decoded_blocks::<176, QK_K>(row, x, q5_k),
        GgmlType::Q6K => decoded_blocks::<210, QK_K>(row, x, q6_k),
        GgmlType::F16 => {
            decoded_blocks::<{ 2 * 64 }, 64>(row, x, |b, y| {
                for (v, h) in y.iter_mut().zip(b.chunks_exact(2)) {
                    *v = f16_at(h, 0);
                }
            }) + tail_dot(ty, row, x, 64)
        }
        GgmlType::BF16 => {
            decoded_blocks::<{ 2 * 64 }, 64>(row, x, |b, y| {
                for (v, h) in y.iter_mut().zip(b.chunks_exact(2)) {
                    *v = bf16::from_le_bytes([h[0], h[1]]).to_f32();
                }
            }) + tail_dot(ty, row, x, 64)
        }
    }
}

/// Sum over blocks of (block decoded into BS floats) . x, with the decoder inlined.
#[inline(always)]
fn decoded_blocks<const TS: usize, const BS: usize>(row: &[u8], x: &[f32], decode: impl Fn(&[u8], &mut [f32])) -> f32 {
    let mut buf = [0f32; BS];
    // Eight lanes carried across blocks and reduced once per row, so the loop vectorizes.
    let mut acc = [0f32; 8];
    for (b, xs) in row.chunks_exact(TS).zip(x.chunks_exact(BS)) {
        decode(b, &mut buf);
        for (w8, x8) in buf.chunks_exact(8).zip(xs.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += w8[i] * x8[i];
            }
        }
    }
    acc.iter().sum()
}

/// For the element types processed in runs of `run`: the part of the row after the last whole run.
fn tail_dot(ty: GgmlType, row: &[u8], x: &[f32], run: usize) -> f32 {
    let done = x.len() / run * run;
    let es = ty.type_size();
    let decode = block_decoder(ty);
    let mut sum = 0f32;
    for (i, xv) in x[done..].iter().enumerate() {
        let at = (done + i) * es;
        if let Some(b) = row.get(at..at + es) {
            let mut v = 0f32;
            decode(b, std::slice::from_mut(&mut v));
            sum += v * xv;
        }
    }
    sum
}

/// f32 dot product with eight independent accumulators, so the compiler can vectorize it.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

type BlockDecoder = fn(&[u8], &mut [f32]);

fn block_decoder(ty: GgmlType) -> BlockDecoder {
    match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
    }
}

// Q4_0: f16 scale d, then 16 bytes of nibbles; low nibbles are elements 0..16, high nibbles 16..32; x = (q - 8) d.
#[inline(always)]
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

// Q4_1: f16 scale d and minimum m, then nibbles as in Q4_0; x = q d + m.
#[inline(always)]
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0f) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

// Q5_0: f16 d, a u32 of fifth bits (bit j for element j), nibbles as in Q4_0; x = (q - 16) d.
#[inline(always)]
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

// Q5_1: f16 d and m, fifth bits, nibbles; x = q d + m.
#[inline(always)]
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((qs[j] & 0x0f) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

// Q8_0: f16 d, then 32 signed bytes; x = q d.
#[inline(always)]
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 scale bytes of Q4_K and Q5_K.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

// Q4_K: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins for 8 sub-blocks of 32, 128 bytes of nibbles.
// Each 64-element chunk uses 32 bytes: low nibbles for the first 32 elements, high nibbles for the next 32.
#[inline(always)]
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0f) as f32 - min1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

// Q5_K: like Q4_K plus 32 bytes of fifth bits; chunk c takes bit 2c (first 32) and bit 2c+1 (next 32) of qh[l].
#[inline(always)]
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
            let h2 = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
            out[l] = d1 * ((q[l] & 0x0f) as f32 + h1) - min1;
            out[l + 32] = d2 * ((q[l] >> 4) as f32 + h2) - min2;
        }
    }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed 8-bit scales, f16 d; x = d s (q - 32).
// Each half of 128 elements uses 64 low bytes, 32 high bytes and 8 scales (one per 16 elements).
#[inline(always)]
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
