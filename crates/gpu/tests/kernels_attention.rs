//! The attention-path kernels (rope + KV-cache write, attention, silu_gate, add) against their CPU twins in
//! `personascope_model::ops`, on fresh random inputs of awkward sizes, for ragged batches: rows of several
//! sequences interleaved in one call, each row with its own position and its own place in the KV cache (a shared
//! prefix's region, then the sequence's own), as the row table ([`Row`]) describes.

mod common;

use common::{assert_close, gpu, random};
use personascope_gpu::kernel::{grid_1d, read_f32, storage, storage_f32};
use personascope_gpu::kernels::add::{self, Add};
use personascope_gpu::kernels::attention::{self, Attention, AttentionShape};
use personascope_gpu::kernels::rope::{self, Rope, RopeShape};
use personascope_gpu::kernels::silu_gate::{self, SiluGate};
use personascope_gpu::rows::Row;
use personascope_gpu::Gpu;
use personascope_model::ops::{self, Heads};
use personascope_model::RopePairing;

/// RoPE: the twin takes sin/cos of the same f32 angle in f64; the GPU reduces the angle mod 2*pi (Cody-Waite, error
/// ~1e-7 rad below 4e5 rad) and uses f32 sin/cos. Each output is x0*cos - x1*sin with |x| <= 1, so the error is a
/// few f32 ulps; the margin is for GPUs whose sin/cos are only accurate to ~1e-6 on [-pi, pi].
const ROPE_ABS: f32 = 4e-6;
const ROPE_REL: f32 = 1e-6;
/// Attention: f32 dot products in another order, online-softmax rescaling and the final divide instead of the
/// twin's per-key divide: a few ulps of the output, which is a convex combination of v values in [-1, 1].
const ATTN_ABS: f32 = 2e-6;
const ATTN_REL: f32 = 1e-5;
/// silu: f32 exp (a few ulps) and, for negative inputs, a rewritten but equal formula (g*e^g/(1+e^g)).
const SILU_ABS: f32 = 1e-6;
const SILU_REL: f32 = 1e-5;
/// Cache rows no row may read hold this: a key read by mistake dominates the softmax, a value the output.
const GARBAGE: f32 = 1e3;

/// Records `f` in one compute pass and submits it.
fn run(gpu: &Gpu, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        f(&mut pass);
    }
    gpu.queue.submit([enc.finish()]);
}

fn read(gpu: &Gpu, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    pollster::block_on(read_f32(gpu, b, len)).expect("read back")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn rows_buffer(gpu: &Gpu, rows: &[Row]) -> wgpu::Buffer {
    storage(gpu, "rows", bytemuck::cast_slice(rows))
}

/// A row of the table: position, sequence, cache row of its key, own region, prefix region.
fn row(pos: u32, seq: u32, kv_row: u32, own_base: u32, prefix: (u32, u32)) -> Row {
    Row { pos, seq, kv_row, own_base, prefix_base: prefix.0, prefix_len: prefix.1, _pad: [0; 2] }
}

/// Like `Model::inv_freq`: base^(-2i/rope_dim), optionally divided by Llama 3 style divisors (1 for high
/// frequencies, up to `factor` for low ones).
fn inv_freq(rope_dim: usize, base: f64, llama3_factor: Option<f64>) -> Vec<f32> {
    let half = rope_dim / 2;
    (0..half)
        .map(|i| {
            let f = base.powf(-(2.0 * i as f64) / rope_dim as f64);
            let div = llama3_factor.map_or(1.0, |fac| 1.0 + (fac - 1.0) * i as f64 / half.max(1) as f64);
            (f / div) as f32
        })
        .collect()
}

struct RopeOut {
    q: Vec<f32>,
    k: Vec<f32>,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// Runs the rope kernel once over `rows`; the caches start as `cache_init` (k, v).
fn gpu_rope(
    k: &Rope,
    shape: &RopeShape,
    rows: &[Row],
    (q, kk, v): (&[f32], &[f32], &[f32]),
    freqs: &[f32],
    cache_init: (&[f32], &[f32]),
) -> RopeOut {
    let gpu = gpu();
    let p = rope::Params::new(shape, rows.len() as u32).expect("rope params");
    let (qb, kb, vb) = (storage_f32(gpu, "q", q), storage_f32(gpu, "k", kk), storage_f32(gpu, "v", v));
    let fb = storage_f32(gpu, "inv_freq", freqs);
    let (kc, vc) = (storage_f32(gpu, "k cache", cache_init.0), storage_f32(gpu, "v cache", cache_init.1));
    let rb = rows_buffer(gpu, rows);
    let params = Rope::params(gpu, &p);
    let bind = k.bind(gpu, &params, &qb, &kb, &vb, &fb, &kc, &vc, &rb);
    run(gpu, |pass| k.dispatch(pass, &bind, &p));
    RopeOut {
        q: read(gpu, &qb, q.len()),
        k: read(gpu, &kb, kk.len()),
        k_cache: read(gpu, &kc, cache_init.0.len()),
        v_cache: read(gpu, &vc, cache_init.1.len()),
    }
}

/// The CPU side of rope over a ragged batch: `ops::rope` on each row alone at the row's position; then the rotated
/// k and the plain v of row t land in cache row `kv_row`.
fn cpu_rope(
    shape: &RopeShape,
    rows: &[Row],
    (q, k, v): (&[f32], &[f32], &[f32]),
    freqs: &[f32],
    cache_init: (&[f32], &[f32]),
) -> RopeOut {
    let (nh, nkv, hd) = (shape.n_heads as usize, shape.n_kv_heads as usize, shape.head_dim as usize);
    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
    let (mut wq, mut wk) = (q.to_vec(), k.to_vec());
    let (mut kc, mut vc) = (cache_init.0.to_vec(), cache_init.1.to_vec());
    for (t, r) in rows.iter().enumerate() {
        let pos = r.pos as usize;
        ops::rope(&mut wq[t * q_dim..(t + 1) * q_dim], nh, hd, pos, freqs, shape.pairing, shape.linear_scale);
        ops::rope(&mut wk[t * kv_dim..(t + 1) * kv_dim], nkv, hd, pos, freqs, shape.pairing, shape.linear_scale);
        let c = r.kv_row as usize * kv_dim;
        kc[c..c + kv_dim].copy_from_slice(&wk[t * kv_dim..(t + 1) * kv_dim]);
        vc[c..c + kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
    }
    RopeOut { q: wq, k: wk, k_cache: kc, v_cache: vc }
}

#[test]
fn rope_matches_cpu_per_row_and_writes_cache_rows() {
    let gpu = gpu();
    let kernel = pollster::block_on(Rope::new(gpu)).expect("compile rope");
    use RopePairing::{Halves, Interleaved};
    // (name, heads, kv heads, head_dim, rope_dim, pairing, base, llama3 factor, linear scale)
    let models = [
        ("smollm2", 9, 3, 64, 64, Interleaved, 100_000.0, None, 1.0),
        ("qwen2.5-0.5b", 14, 2, 64, 64, Halves, 1_000_000.0, None, 1.0),
        ("8/2/32 llama3 linear", 8, 2, 32, 32, Interleaved, 500_000.0, Some(8.0), 4.0),
        ("partial interleaved", 6, 2, 64, 24, Interleaved, 10_000.0, None, 1.0),
        ("partial halves", 6, 3, 48, 16, Halves, 10_000.0, None, 2.0),
    ];
    // Three sequences interleaved, positions not contiguous across rows, cache rows scattered and out of order
    // (sequence 1 continues after a 30-position prefix; sequence 2 is far along).
    let batch = [
        row(0, 0, 7, 7, (0, 0)),
        row(37, 1, 2, 19, (0, 30)),
        row(1, 0, 8, 7, (0, 0)),
        row(4100, 2, 21, 21, (0, 0)),
        row(38, 1, 3, 19, (0, 30)),
        row(2, 0, 9, 7, (0, 0)),
        row(45, 1, 0, 19, (0, 30)),
    ];
    let cache_rows = 24usize;
    let mut worst = 0f32;
    for (mi, &(name, nh, nkv, hd, rd, pairing, base, l3, scale)) in models.iter().enumerate() {
        let shape = RopeShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            rope_dim: rd,
            pairing,
            linear_scale: scale,
            max_positions: cache_rows as u32,
        };
        let (q_dim, kv_dim) = ((nh * hd) as usize, (nkv * hd) as usize);
        let freqs = inv_freq(rd as usize, base, l3);
        for (ci, rows) in [&batch[..], &batch[3..4], &batch[1..3]].into_iter().enumerate() {
            let n = rows.len();
            let seed = 1000 * mi as u64 + 10 * ci as u64;
            let q = random(n * q_dim, seed);
            let k = random(n * kv_dim, seed + 1);
            let v = random(n * kv_dim, seed + 2);
            // Cache rows no row names must come back untouched.
            let kc0 = random(cache_rows * kv_dim, seed + 3);
            let vc0 = random(cache_rows * kv_dim, seed + 4);
            let got = gpu_rope(&kernel, &shape, rows, (&q, &k, &v), &freqs, (&kc0, &vc0));
            let want = cpu_rope(&shape, rows, (&q, &k, &v), &freqs, (&kc0, &vc0));

            let what = format!("rope {name} case {ci} ({n} rows)");
            assert_close(&format!("{what} q"), &got.q, &want.q, ROPE_ABS, ROPE_REL);
            assert_close(&format!("{what} k"), &got.k, &want.k, ROPE_ABS, ROPE_REL);
            assert_close(&format!("{what} k cache"), &got.k_cache, &want.k_cache, ROPE_ABS, ROPE_REL);
            // v is copied bit for bit, to the named rows only; the cache holds exactly what the kernel left in k.
            assert_eq!(bits(&got.v_cache), bits(&want.v_cache), "{what}: v cache");
            for c in 0..cache_rows {
                let (g, w) = (&got.k_cache[c * kv_dim..(c + 1) * kv_dim], &kc0[c * kv_dim..(c + 1) * kv_dim]);
                match rows.iter().position(|r| r.kv_row as usize == c) {
                    Some(t) => assert_eq!(bits(g), bits(&got.k[t * kv_dim..(t + 1) * kv_dim]), "{what}: cache row {c}"),
                    None => assert_eq!(bits(g), bits(w), "{what}: cache row {c} was not named"),
                }
            }
            worst = worst.max(max_abs_diff(&got.q, &want.q)).max(max_abs_diff(&got.k, &want.k));
        }
    }
    eprintln!("rope: largest |gpu - cpu| {worst:e}");
}

/// Positions spread over 0..=65535 (rows of one sequence each, out of order), for both pairings and several
/// bases: the f32 sin/cos error as positions grow.
#[test]
fn rope_long_positions() {
    let gpu = gpu();
    let kernel = pollster::block_on(Rope::new(gpu)).expect("compile rope");
    let hd = 128usize;
    let mut positions: Vec<u32> = (0..3000u32).map(|i| i * 20 + (i * 7) % 13).collect();
    positions.extend([59_999, 60_000, 60_001, 61_234, 65_534, 65_535]);
    // Reversed, so neither the row index nor the cache row follows the position.
    positions.reverse();
    let n = positions.len();
    let rows: Vec<Row> =
        positions.iter().enumerate().map(|(t, &p)| row(p, t as u32, (n - 1 - t) as u32, 0, (0, 0))).collect();
    for (pairing, base, l3, scale) in [
        (RopePairing::Interleaved, 10_000.0, None, 1.0),
        (RopePairing::Halves, 1_000_000.0, None, 1.0),
        (RopePairing::Interleaved, 500_000.0, Some(32.0), 1.0),
        (RopePairing::Halves, 100_000.0, None, 4.0),
    ] {
        let shape = RopeShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: hd as u32,
            rope_dim: hd as u32,
            pairing,
            linear_scale: scale,
            max_positions: n as u32,
        };
        let freqs = inv_freq(hd, base, l3);
        let q = random(n * hd, 7);
        let k = random(n * hd, 8);
        let v = random(n * hd, 9);
        let zeros = vec![0f32; n * hd];
        let got = gpu_rope(&kernel, &shape, &rows, (&q, &k, &v), &freqs, (&zeros, &zeros));
        let want = cpu_rope(&shape, &rows, (&q, &k, &v), &freqs, (&zeros, &zeros));
        // Largest error per band of positions, to see whether it grows with the angle.
        let band = |lo: u32, hi: u32| {
            let idx: Vec<usize> = (0..n).filter(|&t| (lo..=hi).contains(&positions[t])).collect();
            let d = idx
                .iter()
                .map(|&t| max_abs_diff(&got.q[t * hd..(t + 1) * hd], &want.q[t * hd..(t + 1) * hd]))
                .fold(0.0, f32::max);
            format!("{lo}..={hi}: {d:e}")
        };
        let bands = [band(0, 1023), band(1024, 8191), band(8192, 32767), band(32768, 65535)];
        eprintln!("rope {pairing:?} base {base} llama3 {l3:?} scale {scale}: {}", bands.join(", "));
        let what = format!("rope long {pairing:?} {base} scale {scale}");
        assert_close(&format!("{what} q"), &got.q, &want.q, ROPE_ABS, ROPE_REL);
        assert_close(&format!("{what} k"), &got.k, &want.k, ROPE_ABS, ROPE_REL);
        assert_close(&format!("{what} k cache"), &got.k_cache, &want.k_cache, ROPE_ABS, ROPE_REL);
        assert_eq!(bits(&got.v_cache), bits(&want.v_cache), "{what}: v cache");
    }
}

#[test]
fn rope_params_reject_bad_shapes() {
    let ok = RopeShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        rope_dim: 64,
        pairing: RopePairing::Interleaved,
        linear_scale: 1.0,
        max_positions: 100,
    };
    let p = rope::Params::new(&ok, 5).expect("valid shape");
    assert_eq!((p.n_tokens, p.n_heads, p.n_kv_heads, p.head_dim, p.rope_half, p.halves), (5, 9, 3, 64, 32, 0));
    let p = rope::Params::new(&RopeShape { pairing: RopePairing::Halves, rope_dim: 24, linear_scale: 2.0, ..ok }, 1);
    let p = p.expect("partial halves");
    assert_eq!((p.rope_half, p.halves, p.linear_scale), (12, 1, 2.0));
    assert!(rope::Params::new(&ok, 65535).is_ok(), "65535 rows: the y dimension's limit");
    assert!(rope::Params::new(&ok, 65536).is_err(), "too many rows for one dispatch");
    assert!(rope::Params::new(&RopeShape { head_dim: 63, rope_dim: 62, ..ok }, 1).is_err(), "odd head_dim");
    assert!(rope::Params::new(&RopeShape { head_dim: 0, rope_dim: 0, ..ok }, 1).is_err(), "head_dim 0");
    assert!(rope::Params::new(&RopeShape { rope_dim: 66, ..ok }, 1).is_err(), "rope_dim > head_dim");
    assert!(rope::Params::new(&RopeShape { rope_dim: 63, ..ok }, 1).is_err(), "odd rope_dim");
    assert!(rope::Params::new(&RopeShape { n_heads: 0, ..ok }, 1).is_err(), "no heads");
    assert!(rope::Params::new(&RopeShape { n_kv_heads: 0, ..ok }, 1).is_err(), "no kv heads");
    for s in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(rope::Params::new(&RopeShape { linear_scale: s, ..ok }, 1).is_err(), "linear scale {s}");
    }
    // One token's pairs must fit 65535 workgroups, and the head count must not overflow.
    assert!(rope::Params::new(&RopeShape { n_heads: 1 << 20, head_dim: 16, rope_dim: 16, ..ok }, 1).is_err());
    assert!(rope::Params::new(&RopeShape { n_heads: u32::MAX, ..ok }, 1).is_err());
}

/// Runs attention over caches `kc`, `vc` for `rows` and returns out [n, n_heads*hd].
fn gpu_attention(k: &Attention, shape: &AttentionShape, rows: &[Row], q: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f32> {
    let gpu = gpu();
    let p = attention::Params::new(shape, rows.len() as u32).expect("attention params");
    let (qb, kb, vb) = (storage_f32(gpu, "q", q), storage_f32(gpu, "k cache", kc), storage_f32(gpu, "v cache", vc));
    let ob = storage_f32(gpu, "out", &vec![f32::NAN; q.len()]);
    let rb = rows_buffer(gpu, rows);
    let params = Attention::params(gpu, &p);
    let bind = k.bind(gpu, &params, &qb, &kb, &vb, &ob, &rb);
    run(gpu, |pass| k.dispatch(pass, &bind, &p).expect("dispatch"));
    read(gpu, &ob, q.len())
}

/// The keys of `r` as `Heads::attend` takes them: the prefix's part of the cache, then the row's own part.
fn parts<'a>(r: &Row, kv_dim: usize, kc: &'a [f32], vc: &'a [f32]) -> [(&'a [f32], &'a [f32]); 2] {
    let n_keys = r.pos as usize + 1;
    let prefix = (r.prefix_len as usize).min(n_keys);
    let (pb, ob) = (r.prefix_base as usize * kv_dim, r.own_base as usize * kv_dim);
    let own = (n_keys - prefix) * kv_dim;
    let p_end = pb + prefix * kv_dim;
    [(&kc[pb..p_end], &vc[pb..p_end]), (&kc[ob..ob + own], &vc[ob..ob + own])]
}

/// `Heads::attend` for every (row, head): each row over its own keys.
fn cpu_attention(shape: &AttentionShape, rows: &[Row], q: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f32> {
    let heads =
        Heads { n_heads: shape.n_heads as usize, n_kv_heads: shape.n_kv_heads as usize, hd: shape.head_dim as usize };
    let (q_dim, kv_dim) = (heads.n_heads * heads.hd, heads.n_kv_heads * heads.hd);
    let mut out = vec![0f32; rows.len() * q_dim];
    for (t, r) in rows.iter().enumerate() {
        let q_row = &q[t * q_dim..(t + 1) * q_dim];
        let keys = parts(r, kv_dim, kc, vc);
        for h in 0..heads.n_heads {
            let o = &mut out[t * q_dim + h * heads.hd..t * q_dim + (h + 1) * heads.hd];
            heads.attend(h, q_row, &keys, r.pos as usize + 1, o);
        }
    }
    out
}

/// A ragged batch over one cache: a 70-position shared prefix at rows 3..73, sequences continuing it with their
/// own regions at different offsets (one already 30 positions past the prefix, one still inside it), and two
/// sequences without a prefix (one short, one with 151 keys: three tiles of keys), rows interleaved. Returns the
/// rows and the number of cache rows.
fn ragged_batch() -> (Vec<Row>, usize) {
    let pre = (3, 70);
    let rows = vec![
        row(70, 0, 76, 76, pre),
        row(98, 1, 118, 90, pre),
        row(0, 2, 130, 130, (0, 0)),
        row(71, 0, 77, 76, pre),
        row(150, 3, 290, 140, (0, 0)),
        row(1, 2, 131, 130, (0, 0)),
        row(99, 1, 119, 90, pre),
        row(74, 0, 80, 76, pre),
        row(20, 4, 23, 300, pre),
        row(2, 2, 132, 130, (0, 0)),
    ];
    (rows, 305)
}

/// Fills every cache row that no row of `rows` reads with [`GARBAGE`].
fn poison_unread(rows: &[Row], kv_dim: usize, kc: &mut [f32], vc: &mut [f32]) {
    let cache_rows = kc.len() / kv_dim;
    let mut read = vec![false; cache_rows];
    for r in rows {
        for j in 0..=r.pos {
            read[r.key_row(j) as usize] = true;
        }
    }
    for c in (0..cache_rows).filter(|&c| !read[c]) {
        kc[c * kv_dim..(c + 1) * kv_dim].fill(GARBAGE);
        vc[c * kv_dim..(c + 1) * kv_dim].fill(GARBAGE);
    }
}

#[test]
fn attention_matches_cpu_over_prefix_and_own_regions() {
    let gpu = gpu();
    let k64 = pollster::block_on(Attention::for_head_dim(gpu, 64)).expect("compile attention 64");
    let k128 = pollster::block_on(Attention::new(gpu)).expect("compile attention 128");
    let k256 = pollster::block_on(Attention::for_head_dim(gpu, 256)).expect("compile attention 256");
    assert_eq!((k64.max_head_dim, k128.max_head_dim, k256.max_head_dim), (64, 128, 256));
    // (name, heads, kv heads, head_dim, kernel)
    let models = [
        ("smollm2 9/3/64", 9, 3, 64, &k64),
        ("smollm2 9/3/64 on the 128 variant", 9, 3, 64, &k128),
        ("4/2/128", 4, 2, 128, &k128),
        ("4/2/64", 4, 2, 64, &k64),
        ("qwen2.5-0.5b 14/2/64", 14, 2, 64, &k64),
        ("mha 3/3/20", 3, 3, 20, &k64),
        ("gemma-like 4/1/256", 4, 1, 256, &k256),
    ];
    // The CPU-adapter design, compiled per head layout, on the same cases.
    let solo = |nh: u32, nkv: u32, hd: u32| {
        let k = pollster::block_on(Attention::solo(gpu, nh, nkv, hd)).expect("compile solo attention");
        assert_eq!(k.solo, Some((nh / nkv, hd)));
        k
    };
    let solos: Vec<Attention> = models.iter().map(|&(_, nh, nkv, hd, _)| solo(nh, nkv, hd)).collect();
    let solo_names: Vec<String> = models.iter().map(|m| format!("{} (solo)", m.0)).collect();
    let models: Vec<(&str, u32, u32, u32, &Attention)> = models
        .iter()
        .copied()
        .chain(models.iter().zip(&solos).zip(&solo_names).map(|((m, k), n)| (n.as_str(), m.1, m.2, m.3, k)))
        .collect();
    let (batch, cache_rows) = ragged_batch();
    let mut worst = 0f32;
    for (mi, &(name, nh, nkv, hd, kernel)) in models.iter().enumerate() {
        let shape = AttentionShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd, max_positions: cache_rows as u32 };
        let (q_dim, kv_dim) = ((nh * hd) as usize, (nkv * hd) as usize);
        // The whole batch, one long row alone, and a row inside the prefix with the short no-prefix rows.
        let cases: [Vec<Row>; 3] = [batch.clone(), vec![batch[4]], vec![batch[8], batch[2], batch[5]]];
        for (ci, rows) in cases.iter().enumerate() {
            let seed = 100 * mi as u64 + 10 * ci as u64;
            // Scaled q makes the softmax peaky, so the running max and the rescaling matter.
            let q: Vec<f32> = random(rows.len() * q_dim, seed).iter().map(|x| x * 4.0).collect();
            let mut kc = random(cache_rows * kv_dim, seed + 1);
            let mut vc = random(cache_rows * kv_dim, seed + 2);
            poison_unread(rows, kv_dim, &mut kc, &mut vc);
            let got = gpu_attention(kernel, &shape, rows, &q, &kc, &vc);
            let want = cpu_attention(&shape, rows, &q, &kc, &vc);
            assert!(want.iter().all(|x| x.abs() <= 1.0), "{name}: the reference read a poisoned row");
            assert_close(&format!("attention {name} case {ci}"), &got, &want, ATTN_ABS, ATTN_REL);
            worst = worst.max(max_abs_diff(&got, &want));
        }
    }
    eprintln!("attention: largest |gpu - cpu| {worst:e}");
}

/// The same rows in another order give each row the same output: a row's result depends on its table entry, not
/// on its index in the batch.
#[test]
fn attention_rows_are_independent_of_their_order() {
    let gpu = gpu();
    let k = pollster::block_on(Attention::new(gpu)).expect("compile attention");
    let (batch, cache_rows) = ragged_batch();
    let shape = AttentionShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, max_positions: cache_rows as u32 };
    let (q_dim, kv_dim) = (9 * 64, 3 * 64);
    let q = random(batch.len() * q_dim, 500);
    let (mut kc, mut vc) = (random(cache_rows * kv_dim, 501), random(cache_rows * kv_dim, 502));
    poison_unread(&batch, kv_dim, &mut kc, &mut vc);
    let got = gpu_attention(&k, &shape, &batch, &q, &kc, &vc);
    let order: Vec<usize> = (0..batch.len()).rev().collect();
    let rows: Vec<Row> = order.iter().map(|&t| batch[t]).collect();
    let q2: Vec<f32> = order.iter().flat_map(|&t| q[t * q_dim..(t + 1) * q_dim].to_vec()).collect();
    let got2 = gpu_attention(&k, &shape, &rows, &q2, &kc, &vc);
    for (i, &t) in order.iter().enumerate() {
        let (a, b) = (&got[t * q_dim..(t + 1) * q_dim], &got2[i * q_dim..(i + 1) * q_dim]);
        assert_eq!(bits(a), bits(b), "row {t} moved to {i}");
    }
    // And the rows do differ from each other (the comparison above is not between constants).
    assert_ne!(bits(&got[..q_dim]), bits(&got[q_dim..2 * q_dim]));
}

#[test]
fn attention_params_reject_bad_shapes() {
    let ok = AttentionShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, max_positions: 10 };
    let p = attention::Params::new(&ok, 7).expect("valid shape");
    assert_eq!((p.n_tokens, p.n_heads, p.n_kv_heads, p.head_dim, p.scale), (7, 9, 3, 64, 0.125));
    assert!(attention::Params::new(&AttentionShape { n_heads: 4, n_kv_heads: 2, head_dim: 128, ..ok }, 1).is_ok());
    assert!(attention::Params::new(&ok, 65535).is_ok(), "65535 rows: the y dimension's limit");
    assert!(attention::Params::new(&ok, 65536).is_err(), "too many rows for one dispatch");
    assert!(attention::Params::new(&AttentionShape { n_kv_heads: 2, ..ok }, 1).is_err(), "9 heads over 2");
    assert!(attention::Params::new(&AttentionShape { n_heads: 4, n_kv_heads: 3, ..ok }, 1).is_err(), "4 over 3");
    assert!(attention::Params::new(&AttentionShape { n_kv_heads: 0, ..ok }, 1).is_err(), "no kv heads");
    assert!(attention::Params::new(&AttentionShape { n_heads: 0, ..ok }, 1).is_err(), "no heads");
    assert!(attention::Params::new(&AttentionShape { n_heads: 65536, n_kv_heads: 1, ..ok }, 1).is_err());
    assert!(attention::Params::new(&AttentionShape { head_dim: 63, ..ok }, 1).is_err(), "odd head_dim");
    assert!(attention::Params::new(&AttentionShape { head_dim: 62, ..ok }, 1).is_err(), "not a multiple of 4");
    assert!(attention::Params::new(&AttentionShape { head_dim: 0, ..ok }, 1).is_err(), "head_dim 0");
    assert!(attention::Params::new(&AttentionShape { head_dim: 260, ..ok }, 1).is_err(), "past 256");
    assert!(pollster::block_on(Attention::for_head_dim(gpu(), 260)).is_err(), "no variant past 256");
    // A variant refuses to dispatch heads larger than it was built for.
    let gpu = gpu();
    let k = pollster::block_on(Attention::for_head_dim(gpu, 64)).expect("compile");
    assert_eq!(k.max_head_dim, 64);
    let p = attention::Params::new(&AttentionShape { head_dim: 128, ..ok }, 1).expect("params");
    let (b, params) = (storage_f32(gpu, "b", &[0.0; 8]), Attention::params(gpu, &p));
    let bind = k.bind(gpu, &params, &b, &b, &b, &b, &b);
    run(gpu, |pass| assert!(k.dispatch(pass, &bind, &p).is_err(), "head_dim 128 on the 64 variant"));
    // A solo pipeline refuses any other head layout than its own; too large a layout has no solo pipeline.
    let s = pollster::block_on(Attention::solo(gpu, 9, 3, 64)).expect("compile solo");
    let p = attention::Params::new(&AttentionShape { n_heads: 8, n_kv_heads: 2, ..ok }, 1).expect("params");
    run(gpu, |pass| assert!(s.dispatch(pass, &bind, &p).is_err(), "4 heads per KV head on the 3-head pipeline"));
    let p = attention::Params::new(&AttentionShape { head_dim: 128, ..ok }, 1).expect("params");
    run(gpu, |pass| assert!(s.dispatch(pass, &bind, &p).is_err(), "head_dim 128 on the 64 pipeline"));
    assert!(pollster::block_on(Attention::solo(gpu, 8, 1, 256)).is_err(), "8 x 64 vec4 values");
}

#[test]
fn silu_gate_matches_cpu() {
    let gpu = gpu();
    let k = pollster::block_on(SiluGate::new(gpu)).expect("compile silu_gate");
    for (len, seed) in [(1usize, 1u64), (1536, 2), (5 * 4864 + 3, 3)] {
        // Wide range, including inputs where exp(-g) overflows f32.
        let mut gate: Vec<f32> = random(len, seed).iter().map(|x| x * 12.0).collect();
        if len > 4 {
            gate[..4].copy_from_slice(&[-100.0, 100.0, -88.5, 0.0]);
        }
        let up = random(len, seed + 1);
        let (gb, ub) = (storage_f32(gpu, "gate", &gate), storage_f32(gpu, "up", &up));
        let p = silu_gate::Params::new(len as u32);
        let params = SiluGate::params(gpu, &p);
        let bind = k.bind(gpu, &params, &gb, &ub);
        run(gpu, |pass| k.dispatch(pass, &bind, &p));
        let got = read(gpu, &gb, len);
        let mut want = gate.clone();
        ops::silu_gate(&mut want, &up);
        assert_close(&format!("silu_gate {len}"), &got, &want, SILU_ABS, SILU_REL);
        eprintln!("silu_gate {len}: largest |gpu - cpu| {:e}", max_abs_diff(&got, &want));
    }
}

#[test]
fn add_and_add_bias_match_cpu() {
    let gpu = gpu();
    let k = pollster::block_on(Add::new(gpu)).expect("compile add");
    // One f32 add per element, correctly rounded on both sides: exact.
    for (rows, cols, seed) in [(1usize, 576usize, 1u64), (5, 896, 2), (3, 7, 3)] {
        let len = rows * cols;
        let (y, x, bias) = (random(len, seed), random(len, seed + 1), random(cols, seed + 2));

        let (yb, xb) = (storage_f32(gpu, "y", &y), storage_f32(gpu, "x", &x));
        let p = add::Params::residual(len as u32);
        let params = Add::params(gpu, &p);
        let bind = k.bind(gpu, &params, &yb, &xb);
        run(gpu, |pass| k.dispatch(pass, &bind, &p));
        let mut want = y.clone();
        ops::add(&mut want, &x);
        assert_eq!(bits(&read(gpu, &yb, len)), bits(&want), "add {rows}x{cols}");

        let (yb, bb) = (storage_f32(gpu, "y", &y), storage_f32(gpu, "bias", &bias));
        let p = add::Params::bias(rows as u32, cols as u32).expect("bias params");
        let params = Add::params(gpu, &p);
        let bind = k.bind_bias(gpu, &params, &yb, &bb);
        run(gpu, |pass| k.dispatch_bias(pass, &bind, &p));
        let mut want = y.clone();
        ops::add_bias(&mut want, &bias);
        assert_eq!(bits(&read(gpu, &yb, len)), bits(&want), "add_bias {rows}x{cols}");
    }
    assert!(add::Params::bias(3, 0).is_err());
}

/// More elements than 65535 workgroups cover: the 2-D grid must reach every element exactly once.
#[test]
fn add_covers_a_two_dimensional_grid() {
    assert_eq!(grid_1d(65535 * 256, 256), [65535, 1, 1]);
    assert_eq!(grid_1d(65535 * 256 + 1, 256), [65535, 2, 1]);
    assert_eq!(grid_1d(0, 256), [1, 1, 1]);
    let gpu = gpu();
    let k = pollster::block_on(Add::new(gpu)).expect("compile add");
    let len = 65535 * add::WORKGROUP as usize + 1000;
    let y: Vec<f32> = (0..len).map(|i| (i % 1024) as f32).collect();
    let x = vec![1f32; len];
    let (yb, xb) = (storage_f32(gpu, "y", &y), storage_f32(gpu, "x", &x));
    let p = add::Params::residual(len as u32);
    let params = Add::params(gpu, &p);
    let bind = k.bind(gpu, &params, &yb, &xb);
    run(gpu, |pass| k.dispatch(pass, &bind, &p));
    let got = read(gpu, &yb, len);
    let bad = (0..len).find(|&i| got[i] != y[i] + 1.0);
    assert_eq!(bad, None, "first element not incremented exactly once");
}

/// One sequence's keys on the CPU side: the shared prefix's and its own, in position order.
#[derive(Default, Clone)]
struct SeqCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The per-call use the engine makes of these kernels, like `Model::forward` for qwen2 but over ragged calls: bias
/// add, rope + cache write and attention recorded in one pass, pipelines and bind groups made once, only the
/// uniforms and the row table rewritten per call. Call 0 fills a 5-position prefix; call 1 has two sequences
/// continuing it (own regions at different offsets) and one without a prefix, rows interleaved; calls 2 and 3
/// are a decode row each. Against the CPU ops on per-sequence caches.
#[test]
fn ragged_calls_match_cpu() {
    let gpu = gpu();
    let (rope_k, attn_k) = (
        pollster::block_on(Rope::new(gpu)).expect("compile rope"),
        pollster::block_on(Attention::new(gpu)).expect("compile attention"),
    );
    let add_k = pollster::block_on(Add::new(gpu)).expect("compile add");
    let (nh, nkv, hd, max_n, cache_rows) = (14usize, 2usize, 64usize, 9usize, 48usize);
    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
    let rshape = RopeShape {
        n_heads: nh as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        rope_dim: hd as u32,
        pairing: RopePairing::Halves,
        linear_scale: 1.0,
        max_positions: cache_rows as u32,
    };
    let ashape = AttentionShape {
        n_heads: nh as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        max_positions: cache_rows as u32,
    };
    let freqs = inv_freq(hd, 1_000_000.0, None);
    let (bq, bk, bv) = (random(q_dim, 90), random(kv_dim, 91), random(kv_dim, 92));

    let zeros = |len: usize| storage_f32(gpu, "zeros", &vec![0f32; len]);
    let (qb, kb, vb, ob) = (zeros(max_n * q_dim), zeros(max_n * kv_dim), zeros(max_n * kv_dim), zeros(max_n * q_dim));
    let (kc, vc) = (zeros(cache_rows * kv_dim), zeros(cache_rows * kv_dim));
    let rb = storage(gpu, "rows", bytemuck::cast_slice(&vec![Row::default(); max_n]));
    let fb = storage_f32(gpu, "inv_freq", &freqs);
    let (bqb, bkb, bvb) = (storage_f32(gpu, "bq", &bq), storage_f32(gpu, "bk", &bk), storage_f32(gpu, "bv", &bv));
    let (rp0, ap0) = (rope::Params::new(&rshape, 1).expect("rope"), attention::Params::new(&ashape, 1).expect("attn"));
    let (rpb, apb) = (Rope::params(gpu, &rp0), Attention::params(gpu, &ap0));
    // The bias adds cover all max_n rows: adding bias to rows past n is harmless and keeps these uniforms fixed.
    let bias_p = |cols: usize| add::Params::bias(max_n as u32, cols as u32).expect("bias params");
    let (pq, pkv) = (bias_p(q_dim), bias_p(kv_dim));
    let (bqp, bkp) = (Add::params(gpu, &pq), Add::params(gpu, &pkv));
    let rope_bind = rope_k.bind(gpu, &rpb, &qb, &kb, &vb, &fb, &kc, &vc, &rb);
    let attn_bind = attn_k.bind(gpu, &apb, &qb, &kc, &vc, &ob, &rb);
    let bias_binds = [
        add_k.bind_bias(gpu, &bqp, &qb, &bqb),
        add_k.bind_bias(gpu, &bkp, &kb, &bkb),
        add_k.bind_bias(gpu, &bkp, &vb, &bvb),
    ];

    // Sequence 0 is the prefix (cache rows 2..7); 1 and 2 continue it from own regions at 20 and 10; 3 has no
    // prefix (own region at 33).
    let pre = (2u32, 5u32);
    let calls: Vec<Vec<Row>> = vec![
        (0..5).map(|p| row(p, 0, 2 + p, 2, (0, 0))).collect(),
        vec![
            row(5, 1, 20, 20, pre),
            row(0, 3, 33, 33, (0, 0)),
            row(5, 2, 10, 10, pre),
            row(6, 1, 21, 20, pre),
            row(1, 3, 34, 33, (0, 0)),
            row(6, 2, 11, 10, pre),
            row(7, 1, 22, 20, pre),
            row(2, 3, 35, 33, (0, 0)),
        ],
        vec![row(7, 2, 12, 10, pre), row(8, 1, 23, 20, pre), row(3, 3, 36, 33, (0, 0))],
        vec![row(4, 3, 37, 33, (0, 0)), row(9, 1, 24, 20, pre)],
    ];
    let mut seqs = vec![SeqCache::default(); 4];
    let heads = Heads { n_heads: nh, n_kv_heads: nkv, hd };
    let no_prefix = SeqCache::default();
    for (ci, rows) in calls.iter().enumerate() {
        let n = rows.len();
        let seed = 200 + 10 * ci as u64;
        let (q, k, v) = (random(n * q_dim, seed), random(n * kv_dim, seed + 1), random(n * kv_dim, seed + 2));
        gpu.queue.write_buffer(&qb, 0, bytemuck::cast_slice(&q));
        gpu.queue.write_buffer(&kb, 0, bytemuck::cast_slice(&k));
        gpu.queue.write_buffer(&vb, 0, bytemuck::cast_slice(&v));
        gpu.queue.write_buffer(&rb, 0, bytemuck::cast_slice(rows));
        let rp = rope::Params::new(&rshape, n as u32).expect("rope params");
        let ap = attention::Params::new(&ashape, n as u32).expect("attention params");
        gpu.queue.write_buffer(&rpb, 0, bytemuck::bytes_of(&rp));
        gpu.queue.write_buffer(&apb, 0, bytemuck::bytes_of(&ap));
        run(gpu, |pass| {
            add_k.dispatch_bias(pass, &bias_binds[0], &pq);
            add_k.dispatch_bias(pass, &bias_binds[1], &pkv);
            add_k.dispatch_bias(pass, &bias_binds[2], &pkv);
            rope_k.dispatch(pass, &rope_bind, &rp);
            attn_k.dispatch(pass, &attn_bind, &ap).expect("dispatch");
        });
        let got = read(gpu, &ob, n * q_dim);

        let (mut q, mut k, mut v) = (q, k, v);
        ops::add_bias(&mut q, &bq);
        ops::add_bias(&mut k, &bk);
        ops::add_bias(&mut v, &bv);
        // Every row's key is in the cache before any row attends (rope runs over the whole call first).
        for (t, r) in rows.iter().enumerate() {
            let (qr, kr) = (&mut q[t * q_dim..(t + 1) * q_dim], &mut k[t * kv_dim..(t + 1) * kv_dim]);
            ops::rope(qr, nh, hd, r.pos as usize, &freqs, RopePairing::Halves, 1.0);
            ops::rope(kr, nkv, hd, r.pos as usize, &freqs, RopePairing::Halves, 1.0);
            let s = &mut seqs[r.seq as usize];
            assert_eq!(s.k.len(), (r.pos - r.prefix_len) as usize * kv_dim, "test rows out of order");
            s.k.extend_from_slice(kr);
            s.v.extend_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
        }
        let mut want = vec![0f32; n * q_dim];
        for (t, r) in rows.iter().enumerate() {
            let own = &seqs[r.seq as usize];
            let prefix = if r.prefix_len > 0 { &seqs[0] } else { &no_prefix };
            let keys = [(&prefix.k[..], &prefix.v[..]), (&own.k[..], &own.v[..])];
            for h in 0..nh {
                let o = &mut want[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                heads.attend(h, &q[t * q_dim..(t + 1) * q_dim], &keys, r.pos as usize + 1, o);
            }
        }
        // Rope's error feeds attention through q and k: allow both.
        assert_close(&format!("call {ci} ({n} rows)"), &got, &want, ATTN_ABS + ROPE_ABS, ATTN_REL);
    }
    // Every sequence's keys sit in its region of the cache.
    let (kc_got, vc_got) = (read(gpu, &kc, cache_rows * kv_dim), read(gpu, &vc, cache_rows * kv_dim));
    for (s, base) in [(0usize, 2usize), (1, 20), (2, 10), (3, 33)] {
        let c = &seqs[s];
        let region = base * kv_dim..base * kv_dim + c.k.len();
        assert_close(&format!("k cache of sequence {s}"), &kc_got[region.clone()], &c.k, ROPE_ABS, ROPE_REL);
        assert_eq!(bits(&vc_got[region]), bits(&c.v), "v cache of sequence {s}");
    }
}
