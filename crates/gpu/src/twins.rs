//! CPU twins of the persona and decode kernels, one function per shader with the shader's name, following the
//! kernel's algorithm step for step (same thresholds, same integer arithmetic, same summation order) and taking
//! the kernel's own uniform struct, so parity tests compare like with like. Kernels whose twin lives in
//! `personascope_model::ops` are not repeated here.

use crate::kernels::{accumulate, gather, project, sample, steer};
use crate::Result;

/// True for NaN bit patterns.
pub fn is_nan_bits(b: u32) -> bool {
    (b & 0x7fff_ffff) > 0x7f80_0000
}

/// Monotone map of f32 bits onto u32 (the order of `f32::total_cmp`).
pub fn key(b: u32) -> u32 {
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

pub fn from_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// The sampler's fixed-point weight `2^((x - max) * exp_scale)`, 2^24 at the max, 0 below 2^-24.
pub fn weight(x: f32, max: f32, exp_scale: f32) -> u32 {
    let t = (x - max) * exp_scale;
    if is_nan_bits(t.to_bits()) || t <= -24.0 {
        return 0;
    }
    let q = (-t * 1_048_576.0) as u32;
    let r = q & 0xf_ffff;
    let j = (r >> 12) as usize;
    let a = sample::EXP2_TABLE[j];
    let v = a - (((a - sample::EXP2_TABLE[j + 1]) * (r & 0xfff)) >> 12);
    v >> (q >> 20)
}

/// PCG-RXS-M-XS 32-bit output hash.
pub fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// The 64 random bits of a draw: a hash of (seed, step), so no generator state lives on the GPU.
pub fn random_bits(p: &sample::Params) -> u64 {
    let a = pcg(pcg(pcg(p.seed_lo) ^ p.seed_hi) ^ p.step);
    ((a as u64) << 32) | pcg(a ^ 0x68bc_21eb) as u64
}

/// What the kernel's radix search finds: the largest key K with F(K) >= goal, where F(K) is the (count, weight) of
/// the tokens taking part with key >= K, and F(K), F(K + 1).
struct Found {
    lo: u32,
    at_lo: (u32, u64),
    at_hi1: (u32, u64),
}

/// The kernel's radix search, pass for pass: 4 passes of 256 buckets over [lo, hi], keeping the bucket where F
/// crosses `goal`. `take(i)` gives token i's (key, weight) when it takes part.
fn search(
    vocab: usize,
    take: impl Fn(usize) -> Option<(u32, u64)>,
    on: bool,
    lo: u32,
    hi: u32,
    at_lo: (u32, u64),
    goal: u64,
) -> Found {
    let mut f = Found { lo, at_lo, at_hi1: (0, 0) };
    let mut hi = hi;
    let buckets = sample::WORKGROUP as usize;
    for _ in 0..4 {
        if !(on && f.lo < hi) {
            continue;
        }
        let lo = f.lo;
        let shift = (32 - (hi - lo).leading_zeros()).max(8) - 8;
        let mut hist = vec![(0u32, 0u64); buckets];
        let mut above = (0u32, 0u64);
        for (k, w) in (0..vocab).filter_map(&take).filter(|&(k, _)| k >= lo) {
            let slot = if k > hi { &mut above } else { &mut hist[((k - lo) >> shift) as usize] };
            *slot = (slot.0 + 1, slot.1 + w);
        }
        let mut cum = above;
        let mut b = ((hi - lo) >> shift) as usize;
        loop {
            let next = (cum.0 + hist[b].0, cum.1 + hist[b].1);
            if next.1 >= goal || b == 0 {
                let blo = lo + ((b as u32) << shift);
                let wm1 = (1u32 << shift) - 1;
                (f.lo, hi, f.at_hi1, f.at_lo) = (blo, if hi - blo > wm1 { blo + wm1 } else { hi }, cum, next);
                break;
            }
            cum = next;
            b -= 1;
        }
    }
    f
}

/// Twin of `sample.wgsl` for one sequence: writes the chosen token to `ids[write_index]` and
/// `tokens[token_index]` and the record to `out[out_offset..]`, exactly as the kernel does.
pub fn sample(
    p: &sample::Params,
    logits: &[f32],
    ids: &mut [u32],
    out: &mut [u32],
    tokens: &mut [u32],
) -> Result<sample::Record> {
    p.check(logits.len(), ids.len(), usize::MAX, out.len(), tokens.len())?;
    let vocab = p.vocab as usize;
    let row = &logits[p.logits_offset as usize..][..vocab];
    let mut vals = row.to_vec();
    if p.repetition_penalty != 1.0 {
        let ctx = &ids[p.ctx_start as usize..][..p.ctx_len as usize];
        for &id in ctx.iter().filter(|&&id| (id as usize) < vocab) {
            let l = row[id as usize];
            vals[id as usize] = if l > 0.0 { l / p.repetition_penalty } else { l * p.repetition_penalty };
        }
    }
    let keys: Vec<Option<u32>> = vals.iter().map(|x| x.to_bits()).map(|b| (!is_nan_bits(b)).then(|| key(b))).collect();

    // Pass 1: valid count, key range, argmax (by `>`, -0 == +0, lowest index on ties).
    let n_valid = keys.iter().flatten().count() as u32;
    let key_max = keys.iter().flatten().copied().max().unwrap_or(0);
    let key_min = keys.iter().flatten().copied().min().unwrap_or(u32::MAX);
    let gkey = |i: usize| {
        let b = vals[i].to_bits();
        (!is_nan_bits(b)).then(|| key(if b == 0x8000_0000 { 0 } else { b }))
    };
    let g_max = (0..vocab).filter_map(gkey).max().unwrap_or(0);
    let mut argmax = (0..vocab).find(|&i| gkey(i) == Some(g_max)).unwrap_or(0) as u32;
    if n_valid == 0 || is_nan_bits(vals[0].to_bits()) {
        argmax = 0;
    }
    let mx = from_key(key_max);
    let w = |i: usize| weight(vals[i], mx, p.exp_scale) as u64;
    let (mut kk, mut ki, mut pk, mut pi) = (0u32, u32::MAX, 0u32, u32::MAX);
    let sampled = p.greedy == 0;

    if sampled && p.top_k > 0 {
        let on = p.top_k < n_valid;
        let take = |i: usize| keys[i].map(|k| (k, 1));
        let f = search(vocab, take, on, key_min, key_max, (n_valid, n_valid as u64), p.top_k as u64);
        let ties = f.at_lo.0 - f.at_hi1.0;
        let tie = on && f.at_lo.0 > p.top_k;
        let k_at = f.lo;
        let take = |i: usize| (keys[i] == Some(k_at)).then_some((!(i as u32), 1));
        let need = (p.top_k - f.at_hi1.0) as u64;
        let fi = search(vocab, take, tie, !(p.vocab - 1), u32::MAX, (ties, ties as u64), need);
        if on {
            kk = k_at;
        }
        if tie {
            ki = !fi.lo;
        }
    }
    let in_k = |i: usize, k: u32| k > kk || (k == kk && i as u32 <= ki);

    if sampled && p.top_p_q16 < sample::TOP_P_OFF {
        let take = |i: usize| keys[i].filter(|&k| in_k(i, k)).map(|k| (k, w(i)));
        let total = (0..vocab).filter_map(take).fold((0u32, 0u64), |(n, m), (_, f)| (n + 1, m + f));
        let goal = ((total.1 * p.top_p_q16 as u64 + 0xffff) >> 16).max(1);
        let on = total.1 >= goal;
        let f = search(vocab, take, on, kk.max(key_min), key_max, total, goal);
        let tie = on && f.at_lo.0 - f.at_hi1.0 > 1;
        let k_at = f.lo;
        let take = |i: usize| (keys[i] == Some(k_at) && in_k(i, k_at)).then(|| (!(i as u32), w(i)));
        let ties = (f.at_lo.0 - f.at_hi1.0, f.at_lo.1 - f.at_hi1.1);
        let fi = search(vocab, take, tie, !(p.vocab - 1), u32::MAX, ties, goal.wrapping_sub(f.at_hi1.1));
        if on {
            pk = k_at;
        }
        if tie {
            pi = !fi.lo;
        }
    }
    let in_p = |i: usize, k: u32| k > pk || (k == pk && i as u32 <= pi);

    let mut rec = sample::Record { token: argmax, step: p.step, candidates: 1, status: sample::STATUS_GREEDY };
    if sampled {
        // Thread-major order: thread t owns tokens t, t + WG, ...; the kernel's per-thread prefix sums and scan
        // amount to walking that order once.
        let wg = sample::WORKGROUP as usize;
        let order = (0..wg).flat_map(|t| (t..vocab).step_by(wg));
        let fin: Vec<usize> = order.filter(|&i| keys[i].is_some_and(|k| in_k(i, k) && in_p(i, k))).collect();
        let total: u64 = fin.iter().map(|&i| w(i)).sum();
        let target = ((total as u128 * random_bits(p) as u128) >> 64) as u64;
        rec.candidates = fin.len() as u32;
        rec.status = sample::STATUS_FALLBACK;
        if total > 0 {
            rec.status = sample::STATUS_SAMPLED;
            let mut cum = 0u64;
            for &i in &fin {
                cum += w(i);
                if target < cum {
                    rec.token = i as u32;
                    break;
                }
            }
        }
    }
    ids[p.write_index as usize] = rec.token;
    tokens[p.token_index as usize] = rec.token;
    out[p.out_offset as usize..][..4].copy_from_slice(&[rec.token, rec.step, rec.candidates, rec.status]);
    Ok(rec)
}

/// The entries of one list of a lists buffer (`words` as [`crate::rows::Lists::words`] writes them).
pub fn list_entries(words: &[u32], dir: u32, stride: usize) -> Result<Vec<&[u32]>> {
    let bad = || crate::GpuError::Validation { what: "lists".into(), msg: format!("directory word {dir}") };
    let first = *words.get(dir as usize).ok_or_else(bad)? as usize;
    let count = *words.get(dir as usize + 1).ok_or_else(bad)? as usize;
    let all = words.get(first..first + count * stride).ok_or_else(bad)?;
    Ok(all.chunks_exact(stride).collect())
}

/// Twin of `project.wgsl`: `out[base + t * layers + layer]` for every entry (row, base) and monitored trait t.
pub fn project(
    p: &project::Params,
    x: &[f32],
    units: &[f32],
    mask: &[u32],
    out: &mut [f32],
    lists: &[u32],
) -> Result<()> {
    let (layers, d) = (p.layers as usize, p.d as usize);
    let lanes = project::LANES as usize;
    for e in list_entries(lists, p.dir, 2)? {
        let (row, base) = (e[0] as usize, e[1] as usize);
        for t in 0..p.traits as usize {
            let s = t * layers + p.layer as usize;
            if (mask.get(s / 32).copied().unwrap_or(0) >> (s % 32)) & 1 == 0 {
                continue;
            }
            let (h, v) = (&x[row * d..][..d], &units[s * d..][..d]);
            let partial = |lane: usize| (lane..d).step_by(lanes).fold(0f32, |acc, c| acc + h[c] * v[c]);
            out[base + s] = (0..lanes).map(partial).fold(0f32, |a, b| a + b);
        }
    }
    Ok(())
}

/// Twin of `steer.wgsl`: entries of the row's sequence applied in order, rows no entry covers left as they are.
pub fn steer(
    p: &steer::Params,
    x: &mut [f32],
    vectors: &[f32],
    entries: &[steer::Entry],
    rows: &[crate::rows::Row],
    n_rows: usize,
) -> Result<()> {
    let d = p.d as usize;
    let mine = entries
        .get(p.first as usize..p.first as usize + p.count as usize)
        .ok_or_else(|| crate::GpuError::Validation { what: "steer".into(), msg: format!("{p:?}") })?;
    for (r, row) in rows.iter().take(n_rows).enumerate() {
        let xr = &mut x[r * d..][..d];
        for e in mine.iter().filter(|e| e.seq == row.seq && row.pos >= e.start && row.pos < e.end) {
            for (xv, v) in xr.iter_mut().zip(&vectors[e.offset as usize..][..d]) {
                *xv += e.alpha * v;
            }
        }
    }
    Ok(())
}

/// Twin of `gather.wgsl`.
pub fn gather(p: &gather::Params, src: &[f32], dst: &mut [f32], lists: &[u32]) -> Result<()> {
    let d = p.d as usize;
    for e in list_entries(lists, p.dir, 2)? {
        let (row, off) = (e[0] as usize, e[1] as usize);
        dst[off..off + d].copy_from_slice(&src[row * d..(row + 1) * d]);
    }
    Ok(())
}

/// Twin of `accumulate.wgsl`: the same f32 adds in the same order, so the results are bit-identical.
pub fn accumulate(p: &accumulate::Params, x: &[f32], sums: &mut [f32], lists: &[u32]) -> Result<()> {
    let d = p.d as usize;
    for e in list_entries(lists, p.dir, 4)? {
        let (start, n, off) = (e[0] as usize, e[1] as usize, e[2] as usize);
        for r in start..start + n {
            for (s, v) in sums[off..off + d].iter_mut().zip(&x[r * d..(r + 1) * d]) {
                *s += v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_table_is_exact() {
        for (j, &v) in sample::EXP2_TABLE.iter().enumerate() {
            let want = 16_777_216.0 * (-(j as f64) / 256.0).exp2();
            assert!((v as f64 - want).abs() <= 0.5, "entry {j}: {v} vs {want}");
        }
    }

    #[test]
    fn weights_follow_exp2() {
        let scale = std::f32::consts::LOG2_E;
        assert_eq!(weight(3.0, 3.0, scale), 1 << 24);
        for x in [-0.01f32, -0.7, -3.3, -9.0, -16.0] {
            let got = weight(x, 0.0, scale) as f64;
            let want = 16_777_216.0 * (x as f64).exp();
            // Linear interpolation (~1e-6) plus the truncation of small weights to integers.
            assert!((got - want).abs() <= want * 2e-6 + 1.0, "x {x}: {got} vs {want}");
        }
        assert_eq!(weight(-17.0, 0.0, scale), 0, "below 2^-24");
        assert_eq!(weight(f32::NAN, 0.0, scale), 0);
        assert_eq!(weight(f32::INFINITY, f32::INFINITY, scale), 0);
    }

    #[test]
    fn keys_follow_total_order() {
        let xs = [f32::NEG_INFINITY, -3.0, -1e-30, -0.0, 0.0, 1e-30, 2.5, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(key(w[0].to_bits()) < key(w[1].to_bits()), "{} {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(from_key(key(x.to_bits())).to_bits(), x.to_bits());
        }
    }
}
