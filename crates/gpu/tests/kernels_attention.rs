//! The attention-path kernels (rope + KV-cache write, attention, silu_gate, add) against their CPU twins in
//! `personascope_model::ops`, on fresh random inputs of awkward sizes.

mod common;

use common::{assert_close, gpu, random};
use personascope_gpu::kernel::{grid_1d, read_f32, storage_f32};
use personascope_gpu::kernels::add::{self, Add};
use personascope_gpu::kernels::attention::{self, Attention, AttentionShape};
use personascope_gpu::kernels::rope::{self, Rope, RopeShape};
use personascope_gpu::kernels::silu_gate::{self, SiluGate};
use personascope_gpu::Gpu;
use personascope_model::{ops, RopePairing};

/// RoPE: the twin takes sin/cos of the same f32 angle in f64; the GPU reduces the angle mod 2*pi (Cody-Waite, error
/// ~1e-7 rad below 4e5 rad) and uses f32 sin/cos. Each output is x0*cos - x1*sin with |x| <= 1, so the error is a
/// few f32 ulps: measured at most 2.4e-7 on lavapipe for every position up to 8192 (`rope_long_positions`); the
/// margin is for GPUs whose sin/cos are only accurate to ~1e-6 on [-pi, pi].
const ROPE_ABS: f32 = 4e-6;
const ROPE_REL: f32 = 1e-6;
/// Attention: f32 dot products in another order, online-softmax rescaling and the final divide instead of the
/// twin's per-key divide: a few ulps of the output, which is a convex combination of v values in [-1, 1]
/// (measured at most 4.8e-7 on lavapipe, up to 705 keys).
const ATTN_ABS: f32 = 2e-6;
const ATTN_REL: f32 = 1e-5;
/// silu: f32 exp (a few ulps) and, for negative inputs, a rewritten but equal formula (g*e^g/(1+e^g)).
const SILU_ABS: f32 = 1e-6;
const SILU_REL: f32 = 1e-5;

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

/// Runs the rope kernel once; the caches start as `cache_init` (k, v).
fn gpu_rope(
    k: &Rope,
    shape: &RopeShape,
    pos0: u32,
    (q, kk, v): (&[f32], &[f32], &[f32]),
    freqs: &[f32],
    cache_init: (&[f32], &[f32]),
) -> RopeOut {
    let gpu = gpu();
    let n = q.len() / (shape.n_heads * shape.head_dim) as usize;
    let p = rope::Params::new(shape, pos0, n as u32).expect("rope params");
    let (qb, kb, vb) = (storage_f32(gpu, "q", q), storage_f32(gpu, "k", kk), storage_f32(gpu, "v", v));
    let fb = storage_f32(gpu, "inv_freq", freqs);
    let (kc, vc) = (storage_f32(gpu, "k cache", cache_init.0), storage_f32(gpu, "v cache", cache_init.1));
    let params = Rope::params(gpu, &p);
    let bind = k.bind(gpu, &params, &qb, &kb, &vb, &fb, &kc, &vc);
    run(gpu, |pass| k.dispatch(pass, &bind, &p));
    RopeOut {
        q: read(gpu, &qb, q.len()),
        k: read(gpu, &kb, kk.len()),
        k_cache: read(gpu, &kc, cache_init.0.len()),
        v_cache: read(gpu, &vc, cache_init.1.len()),
    }
}

#[test]
fn rope_matches_cpu_and_writes_cache() {
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
    let max_positions = 45usize;
    let mut worst = 0f32;
    for (mi, &(name, nh, nkv, hd, rd, pairing, base, l3, scale)) in models.iter().enumerate() {
        let shape = RopeShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            rope_dim: rd,
            pairing,
            linear_scale: scale,
            max_positions: max_positions as u32,
        };
        let (nh, nkv, hd) = (nh as usize, nkv as usize, hd as usize);
        let kv_dim = nkv * hd;
        let freqs = inv_freq(rd as usize, base, l3);
        for (pos0, n) in [(0usize, 1usize), (0, 5), (37, 1), (37, 5)] {
            let seed = 1000 * mi as u64 + 10 * pos0 as u64 + n as u64;
            let q = random(n * nh * hd, seed);
            let k = random(n * kv_dim, seed + 1);
            let v = random(n * kv_dim, seed + 2);
            // Rows outside pos0..pos0+n must come back untouched.
            let kc0 = random(max_positions * kv_dim, seed + 3);
            let vc0 = random(max_positions * kv_dim, seed + 4);
            let got = gpu_rope(&kernel, &shape, pos0 as u32, (&q, &k, &v), &freqs, (&kc0, &vc0));

            let (mut wq, mut wk) = (q.clone(), k.clone());
            ops::rope(&mut wq, nh, hd, pos0, &freqs, pairing, scale);
            ops::rope(&mut wk, nkv, hd, pos0, &freqs, pairing, scale);
            let (mut wkc, mut wvc) = (kc0.clone(), vc0.clone());
            wkc[pos0 * kv_dim..(pos0 + n) * kv_dim].copy_from_slice(&wk);
            wvc[pos0 * kv_dim..(pos0 + n) * kv_dim].copy_from_slice(&v);

            let what = format!("rope {name} pos0 {pos0} n {n}");
            assert_close(&format!("{what} q"), &got.q, &wq, ROPE_ABS, ROPE_REL);
            assert_close(&format!("{what} k"), &got.k, &wk, ROPE_ABS, ROPE_REL);
            assert_close(&format!("{what} k cache"), &got.k_cache, &wkc, ROPE_ABS, ROPE_REL);
            // The cache holds exactly what the kernel left in k, and v is copied bit for bit.
            assert_eq!(&got.k_cache[pos0 * kv_dim..(pos0 + n) * kv_dim], &got.k[..], "{what}: k cache rows != k");
            assert_eq!(got.v_cache, wvc, "{what}: v cache");
            worst = worst.max(max_abs_diff(&got.q, &wq)).max(max_abs_diff(&got.k, &wk));
        }
    }
    eprintln!("rope: largest |gpu - cpu| {worst:e}");
}

/// Every position 0..8192 for both pairings and several bases: the f32 sin/cos error as positions grow.
#[test]
fn rope_long_positions() {
    let gpu = gpu();
    let kernel = pollster::block_on(Rope::new(gpu)).expect("compile rope");
    let (hd, n) = (128usize, 8192usize);
    for (pairing, base, l3) in [
        (RopePairing::Interleaved, 10_000.0, None),
        (RopePairing::Halves, 1_000_000.0, None),
        (RopePairing::Interleaved, 500_000.0, Some(32.0)),
    ] {
        let shape = RopeShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: hd as u32,
            rope_dim: hd as u32,
            pairing,
            linear_scale: 1.0,
            max_positions: n as u32,
        };
        let freqs = inv_freq(hd, base, l3);
        let q = random(n * hd, 7);
        let k = random(n * hd, 8);
        let zeros = vec![0f32; n * hd];
        let got = gpu_rope(&kernel, &shape, 0, (&q, &k, &k), &freqs, (&zeros, &zeros));
        let mut want = q.clone();
        ops::rope(&mut want, 1, hd, 0, &freqs, pairing, 1.0);
        // Largest error per band of positions, to see whether it grows with the angle.
        let bands: Vec<String> = [0usize, 1024, 4096, 8191]
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0] * hd, (w[1] + 1) * hd);
                format!("{}..={}: {:e}", w[0], w[1], max_abs_diff(&got.q[a..b], &want[a..b]))
            })
            .collect();
        eprintln!("rope {pairing:?} base {base} llama3 {l3:?}: {}", bands.join(", "));
        assert_close(&format!("rope long {pairing:?} {base}"), &got.q, &want, ROPE_ABS, ROPE_REL);
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
    assert!(rope::Params::new(&ok, 95, 5).is_ok());
    assert!(rope::Params::new(&ok, 96, 5).is_err(), "past the cache");
    assert!(rope::Params::new(&ok, u32::MAX, 5).is_err(), "overflow");
    assert!(rope::Params::new(&RopeShape { rope_dim: 66, ..ok }, 0, 1).is_err());
    assert!(rope::Params::new(&RopeShape { head_dim: 63, rope_dim: 62, ..ok }, 0, 1).is_err());
    assert!(rope::Params::new(&RopeShape { linear_scale: 0.0, ..ok }, 0, 1).is_err());
}

/// Runs attention with caches of `max_positions` rows and returns out [n, n_heads*hd].
fn gpu_attention(k: &Attention, shape: &AttentionShape, pos0: u32, q: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f32> {
    let gpu = gpu();
    let n = q.len() / (shape.n_heads * shape.head_dim) as usize;
    let p = attention::Params::new(shape, pos0, n as u32).expect("attention params");
    let (qb, kb, vb) = (storage_f32(gpu, "q", q), storage_f32(gpu, "k cache", kc), storage_f32(gpu, "v cache", vc));
    let ob = storage_f32(gpu, "out", &vec![f32::NAN; q.len()]);
    let params = Attention::params(gpu, &p);
    let bind = k.bind(gpu, &params, &qb, &kb, &vb, &ob);
    run(gpu, |pass| k.dispatch(pass, &bind, &p).expect("dispatch"));
    read(gpu, &ob, q.len())
}

#[test]
fn attention_matches_cpu() {
    let gpu = gpu();
    let k128 = pollster::block_on(Attention::new(gpu)).expect("compile attention");
    let k256 = pollster::block_on(Attention::for_head_dim(gpu, 256)).expect("compile attention 256");
    // (name, heads, kv heads, head_dim)
    let models = [
        ("smollm2", 9, 3, 64),
        ("qwen2.5-0.5b", 14, 2, 64),
        ("8/2/32", 8, 2, 32),
        ("qwen2.5-1.5b-like", 12, 2, 128),
        ("mha 3/3/20", 3, 3, 20),
        ("gemma-like 4/1/256", 4, 1, 256),
    ];
    let mut worst = 0f32;
    for (mi, &(name, nh, nkv, hd)) in models.iter().enumerate() {
        let kernel = if hd <= k128.max_head_dim { &k128 } else { &k256 };
        let cases = [(0usize, 1usize), (0, 5), (37, 1), (37, 5), (700, 1), (695, 5), (63, 1), (60, 8)];
        for (ci, &(pos0, n)) in cases.iter().enumerate() {
            let max_positions = pos0 + n + 3;
            let shape =
                AttentionShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd, max_positions: max_positions as u32 };
            let (nh, nkv, hd) = (nh as usize, nkv as usize, hd as usize);
            let kv_dim = nkv * hd;
            let seed = 100 * mi as u64 + 10 * ci as u64;
            // Scaled q makes the softmax peaky, so the running max and the rescaling matter.
            let q: Vec<f32> = random(n * nh * hd, seed).iter().map(|x| x * 4.0).collect();
            let mut kc = random(max_positions * kv_dim, seed + 1);
            let mut vc = random(max_positions * kv_dim, seed + 2);
            // Rows past the last key are garbage that would dominate if read (causality check).
            for x in kc[(pos0 + n) * kv_dim..].iter_mut().chain(vc[(pos0 + n) * kv_dim..].iter_mut()) {
                *x = 1e3;
            }
            let got = gpu_attention(kernel, &shape, pos0 as u32, &q, &kc, &vc);
            let mut want = vec![0f32; q.len()];
            let keys = (pos0 + n) * kv_dim;
            ops::attention(nh, nkv, hd, &q, &kc[..keys], &vc[..keys], pos0, &mut want);
            assert_close(&format!("attention {name} pos0 {pos0} n {n}"), &got, &want, ATTN_ABS, ATTN_REL);
            worst = worst.max(max_abs_diff(&got, &want));
        }
    }
    eprintln!("attention: largest |gpu - cpu| {worst:e}");
}

#[test]
fn attention_params_reject_bad_shapes() {
    let ok = AttentionShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, max_positions: 10 };
    assert!(attention::Params::new(&ok, 9, 1).is_ok());
    assert!(attention::Params::new(&ok, 9, 2).is_err(), "past the cache");
    assert!(attention::Params::new(&AttentionShape { n_kv_heads: 2, ..ok }, 0, 1).is_err());
    assert!(attention::Params::new(&AttentionShape { head_dim: 62, ..ok }, 0, 1).is_err());
    assert!(attention::Params::new(&AttentionShape { head_dim: 260, ..ok }, 0, 1).is_err());
    let gpu = gpu();
    let k = pollster::block_on(Attention::for_head_dim(gpu, 64)).expect("compile");
    assert_eq!(k.max_head_dim, 64);
    let p = attention::Params::new(&AttentionShape { head_dim: 128, ..ok }, 0, 1).expect("params");
    let (b, params) = (storage_f32(gpu, "b", &[0.0; 4]), Attention::params(gpu, &p));
    let bind = k.bind(gpu, &params, &b, &b, &b, &b);
    run(gpu, |pass| assert!(k.dispatch(pass, &bind, &p).is_err(), "head_dim 128 on the 64 variant"));
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
        assert_eq!(read(gpu, &yb, len), want, "add {rows}x{cols}");

        let (yb, bb) = (storage_f32(gpu, "y", &y), storage_f32(gpu, "bias", &bias));
        let p = add::Params::bias(rows as u32, cols as u32).expect("bias params");
        let params = Add::params(gpu, &p);
        let bind = k.bind_bias(gpu, &params, &yb, &bb);
        run(gpu, |pass| k.dispatch_bias(pass, &bind, &p));
        let mut want = y.clone();
        ops::add_bias(&mut want, &bias);
        assert_eq!(read(gpu, &yb, len), want, "add_bias {rows}x{cols}");
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

/// The per-step use the engine makes of these kernels, like `Model::forward` for qwen2: bias add, rope + cache
/// write and attention recorded in one pass, pipelines and bind groups made once, only the uniforms rewritten per
/// step. A prefill of 5 tokens, then 3 decode steps, against the CPU ops on a growing cache.
#[test]
fn prefill_then_decode_steps_match_cpu() {
    let gpu = gpu();
    let (rope_k, attn_k) = (
        pollster::block_on(Rope::new(gpu)).expect("compile rope"),
        pollster::block_on(Attention::new(gpu)).expect("compile attention"),
    );
    let add_k = pollster::block_on(Add::new(gpu)).expect("compile add");
    let (nh, nkv, hd, max_n, max_positions) = (14usize, 2usize, 64usize, 5usize, 16usize);
    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
    let rshape = RopeShape {
        n_heads: nh as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        rope_dim: hd as u32,
        pairing: RopePairing::Halves,
        linear_scale: 1.0,
        max_positions: max_positions as u32,
    };
    let ashape = AttentionShape {
        n_heads: nh as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        max_positions: max_positions as u32,
    };
    let freqs = inv_freq(hd, 1_000_000.0, None);
    let (bq, bk, bv) = (random(q_dim, 90), random(kv_dim, 91), random(kv_dim, 92));

    let zeros = |len: usize| storage_f32(gpu, "zeros", &vec![0f32; len]);
    let (qb, kb, vb, ob) = (zeros(max_n * q_dim), zeros(max_n * kv_dim), zeros(max_n * kv_dim), zeros(max_n * q_dim));
    let (kc, vc) = (zeros(max_positions * kv_dim), zeros(max_positions * kv_dim));
    let fb = storage_f32(gpu, "inv_freq", &freqs);
    let (bqb, bkb, bvb) = (storage_f32(gpu, "bq", &bq), storage_f32(gpu, "bk", &bk), storage_f32(gpu, "bv", &bv));
    let (rp0, ap0) =
        (rope::Params::new(&rshape, 0, 1).expect("rope"), attention::Params::new(&ashape, 0, 1).expect("attn"));
    let (rpb, apb) = (Rope::params(gpu, &rp0), Attention::params(gpu, &ap0));
    // The bias adds cover all max_n rows: adding bias to rows past n is harmless and keeps these uniforms fixed.
    let bias_p = |cols: usize| add::Params::bias(max_n as u32, cols as u32).expect("bias params");
    let (pq, pkv) = (bias_p(q_dim), bias_p(kv_dim));
    let (bqp, bkp) = (Add::params(gpu, &pq), Add::params(gpu, &pkv));
    let rope_bind = rope_k.bind(gpu, &rpb, &qb, &kb, &vb, &fb, &kc, &vc);
    let attn_bind = attn_k.bind(gpu, &apb, &qb, &kc, &vc, &ob);
    let bias_binds = [
        add_k.bind_bias(gpu, &bqp, &qb, &bqb),
        add_k.bind_bias(gpu, &bkp, &kb, &bkb),
        add_k.bind_bias(gpu, &bkp, &vb, &bvb),
    ];

    let (mut k_cache, mut v_cache) = (Vec::new(), Vec::new());
    let mut pos0 = 0usize;
    for (step, n) in [5usize, 1, 1, 1].into_iter().enumerate() {
        let seed = 200 + 10 * step as u64;
        let (q, k, v) = (random(n * q_dim, seed), random(n * kv_dim, seed + 1), random(n * kv_dim, seed + 2));
        gpu.queue.write_buffer(&qb, 0, bytemuck::cast_slice(&q));
        gpu.queue.write_buffer(&kb, 0, bytemuck::cast_slice(&k));
        gpu.queue.write_buffer(&vb, 0, bytemuck::cast_slice(&v));
        let rp = rope::Params::new(&rshape, pos0 as u32, n as u32).expect("rope params");
        let ap = attention::Params::new(&ashape, pos0 as u32, n as u32).expect("attention params");
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
        ops::rope(&mut q, nh, hd, pos0, &freqs, RopePairing::Halves, 1.0);
        ops::rope(&mut k, nkv, hd, pos0, &freqs, RopePairing::Halves, 1.0);
        k_cache.extend_from_slice(&k);
        v_cache.extend_from_slice(&v);
        let mut want = vec![0f32; n * q_dim];
        ops::attention(nh, nkv, hd, &q, &k_cache, &v_cache, pos0, &mut want);
        // Rope's error feeds attention through q and k: allow both.
        assert_close(&format!("step {step} pos0 {pos0} n {n}"), &got, &want, ATTN_ABS + ROPE_ABS, ATTN_REL);
        pos0 += n;
    }
    let kc_got = read(gpu, &kc, pos0 * kv_dim);
    assert_close("k cache after the steps", &kc_got, &k_cache, ROPE_ABS, ROPE_REL);
    assert_eq!(read(gpu, &vc, pos0 * kv_dim), v_cache, "v cache after the steps");
}
