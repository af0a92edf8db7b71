//! The decode-on-GPU and persona kernels (sample, project, steer, accumulate) against their CPU twins in
//! `personascope_gpu::twins`, and against the CPU references in `personascope_model` where one exists, on random
//! inputs of awkward sizes.

mod common;

use common::{assert_close, gpu, random};
use personascope_gpu::kernel::{read_buffer, read_f32, storage, storage_f32, storage_zeroed};
use personascope_gpu::kernels::accumulate::{self, Accumulate};
use personascope_gpu::kernels::project::{self, Project};
use personascope_gpu::kernels::sample::{self, Record, Sample};
use personascope_gpu::kernels::steer::{self, SteerKernel};
use personascope_gpu::{twins, Gpu};
use personascope_model::{argmax, Projection, ResidualHook, Sampler, SamplingParams, Steer, Steering};
use std::sync::OnceLock;

/// Projection vs its twin: the same summation order; only a fused multiply-add on the GPU can round differently,
/// a few ulps of the partial sums of d products of |h| <= 1 and |v_hat| <= 1.
const PROJECT_ABS: f32 = 2e-6;
const PROJECT_REL: f32 = 1e-5;
/// Projection vs the CPU monitor (`Projection`, AVX dot in another order, and its own normalization): f32
/// rounding of d-term dot products whose terms sum to at most sqrt(d).
const PROJECT_CPU_ABS: f32 = 1e-5;
const PROJECT_CPU_REL: f32 = 1e-5;
/// Steering: x + alpha * v per entry in the same order; a fused multiply-add can change the last bit (values up
/// to about 5 here, ulp 4.8e-7).
const STEER_ABS: f32 = 1e-6;
const STEER_REL: f32 = 1e-6;

/// Running sums of 7 values in [-1, 1] in f32 against f64: a few ulps of values up to 8.
const ACCUMULATE_F64_ABS: f32 = 4e-6;

fn run(gpu: &Gpu, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        f(&mut pass);
    }
    gpu.queue.submit([enc.finish()]);
}

fn read_u32(gpu: &Gpu, b: &wgpu::Buffer, len: usize) -> Vec<u32> {
    let bytes = pollster::block_on(read_buffer(gpu, b, 0, 4 * len as u64)).expect("read back");
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn sampler_kernel() -> &'static Sample {
    static K: OnceLock<Sample> = OnceLock::new();
    K.get_or_init(|| pollster::block_on(Sample::new(gpu())).expect("compile sample"))
}

/// Runs every `params` in order in one compute pass over the same logits, ids and scratch, each writing its
/// record at its own `out_offset`; returns the records and the ids buffer afterwards.
fn gpu_sample(logits: &[f32], ids: &[u32], params: &[sample::Params]) -> (Vec<Record>, Vec<u32>) {
    let gpu = gpu();
    let k = sampler_kernel();
    let vocab = params.iter().map(|p| p.vocab).max().unwrap_or(1) as u64;
    let out_len = params.iter().map(|p| p.out_offset + sample::OUT_WORDS).max().unwrap_or(4) as usize;
    let (lb, ib) = (storage_f32(gpu, "logits", logits), storage(gpu, "ids", bytemuck::cast_slice(ids)));
    let work = storage_zeroed(gpu, "work", 4 * vocab);
    let out = storage_zeroed(gpu, "out", 4 * out_len as u64);
    let binds: Vec<_> = params
        .iter()
        .map(|p| {
            p.check(logits.len(), ids.len(), vocab as usize, out_len).expect("params fit");
            k.bind(gpu, &Sample::params(gpu, p), &lb, &ib, &work, &out)
        })
        .collect();
    run(gpu, |pass| binds.iter().for_each(|b| k.dispatch(pass, b)));
    let words = read_u32(gpu, &out, out_len);
    let recs = params.iter().map(|p| Record::from_words(&words[p.out_offset as usize..]).expect("record")).collect();
    (recs, read_u32(gpu, &ib, ids.len()))
}

/// The twin over the same sequence.
fn twin_sample(logits: &[f32], ids: &[u32], params: &[sample::Params]) -> (Vec<Record>, Vec<u32>) {
    let mut ids = ids.to_vec();
    let out_len = params.iter().map(|p| p.out_offset + sample::OUT_WORDS).max().unwrap_or(4) as usize;
    let mut out = vec![0u32; out_len];
    let recs = params.iter().map(|p| twins::sample(p, logits, &mut ids, &mut out).expect("twin")).collect();
    (recs, ids)
}

fn sp(temperature: f32, top_k: usize, top_p: f32, repetition_penalty: f32, seed: u64) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, repetition_penalty, seed }
}

/// Params for draw number `j` of a batch: record j at 4j, token written to ids[ctx_len + j], context ids[0..ctx].
fn at(s: &SamplingParams, vocab: usize, ctx: usize, step: u32, j: usize) -> sample::Params {
    let mut p = sample::Params::new(s, vocab as u32).expect("valid sampling params");
    p.ctx_len = ctx as u32;
    p.write_index = (ctx + j) as u32;
    p.out_offset = (j * 4) as u32;
    p.step = step;
    p
}

/// Context ids for the penalty: repeats (penalized once) and a few ids past the vocabulary (ignored).
fn context(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let r = random(n, seed);
    let mut ids: Vec<u32> = r.iter().map(|v| ((v + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32).collect();
    if n > 4 {
        ids[1] = ids[0];
        ids[3] = vocab as u32 + 5;
    }
    ids
}

fn logits_for(vocab: usize, scale: f32, seed: u64) -> Vec<f32> {
    random(vocab, seed).iter().map(|v| v * scale).collect()
}

#[test]
fn sample_greedy_matches_cpu_argmax() {
    for (vocab, seed) in [(49152usize, 1u64), (1007, 2), (1, 3), (257, 4)] {
        let logits = logits_for(vocab, 8.0, seed);
        let ctx = context(vocab, 40.min(vocab), seed + 10);
        let mut params = Vec::new();
        let settings = [sp(0.0, 0, 1.0, 1.0, 0), sp(0.0, 0, 1.0, 1.3, 0), sp(0.0, 5, 0.5, 0.7, 0)];
        for (j, s) in settings.iter().enumerate() {
            params.push(at(s, vocab, ctx.len(), 0, j));
        }
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        let (got, got_ids) = gpu_sample(&logits, &ids, &params);
        let (want, want_ids) = twin_sample(&logits, &ids, &params);
        assert_eq!(got, want, "vocab {vocab}: GPU vs twin");
        assert_eq!(got_ids, want_ids, "vocab {vocab}: ids written");
        for (s, rec) in settings.iter().zip(&got) {
            let cpu = Sampler::new(s.clone()).expect("sampler").sample(&logits, &ctx);
            assert_eq!(rec.token, cpu, "vocab {vocab} {s:?}: GPU vs CPU Sampler");
            assert_eq!(rec.status, sample::STATUS_GREEDY);
        }
        assert_eq!(got[0].token as usize, argmax(&logits));
    }
}

#[test]
fn sample_greedy_ties_nan_and_signed_zero() {
    let vocab = 1000 + 7;
    let base = logits_for(vocab, 4.0, 5);
    let mut cases: Vec<(Vec<f32>, &str)> = Vec::new();
    let mut tie = base.clone();
    for i in [900, 17, 512, 1006] {
        tie[i] = 9.0;
    }
    cases.push((tie, "ties at the max -> lowest index"));
    let mut zeros: Vec<f32> = base.iter().map(|v| -v.abs() - 1.0).collect();
    zeros[300] = 0.0;
    zeros[200] = -0.0;
    cases.push((zeros.clone(), "-0 == +0: lowest index"));
    zeros[200] = 0.0;
    zeros[100] = -0.0;
    cases.push((zeros, "-0 == +0 again"));
    let mut nan = base.clone();
    nan[3] = f32::NAN;
    nan[700] = f32::NAN;
    cases.push((nan, "NaN skipped"));
    let mut nan0 = base.clone();
    nan0[0] = f32::NAN;
    cases.push((nan0, "NaN at 0 -> 0, as argmax"));
    cases.push((vec![f32::NEG_INFINITY; vocab], "all -inf -> 0"));
    let mut inf = base.clone();
    inf[40] = f32::INFINITY;
    inf[30] = f32::INFINITY;
    cases.push((inf, "+inf ties"));
    let greedy = sp(0.0, 0, 1.0, 1.0, 0);
    for (logits, what) in &cases {
        let params = [at(&greedy, vocab, 0, 0, 0)];
        let ids = vec![0u32; 1];
        let (got, _) = gpu_sample(logits, &ids, &params);
        let (want, _) = twin_sample(logits, &ids, &params);
        assert_eq!(got, want, "{what}: GPU vs twin");
        assert_eq!(got[0].token as usize, argmax(logits), "{what}: GPU vs argmax");
    }
}

#[test]
fn sample_matches_twin() {
    // (vocab, logit scale, settings): awkward sizes, sharp and flat distributions, ties at the top-k threshold.
    let settings = [
        sp(1.0, 0, 1.0, 1.0, 7),
        sp(0.7, 40, 0.9, 1.1, 8),
        sp(1.3, 0, 0.8, 1.0, 9),
        sp(0.5, 3, 1.0, 1.2, 10),
        sp(2.0, 200, 0.95, 0.9, 11),
        sp(1.0, 1, 1.0, 1.0, u64::MAX),
        sp(1e-3, 0, 1.0, 1.0, 12),
        sp(1.0, 0, 1e-6, 1.0, 13),
    ];
    for (vocab, scale, seed) in [(49152usize, 6.0f32, 20u64), (1007, 3.0, 21), (1007, 0.01, 22), (2, 1.0, 23)] {
        let mut logits = logits_for(vocab, scale, seed);
        if vocab > 100 {
            // Ties straddling the top-k / top-p thresholds.
            let v = logits[(0..vocab).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0)];
            for i in [5, 60, 61, 99] {
                logits[i] = v - 0.25;
            }
        }
        let ctx = context(vocab, 64.min(vocab), seed);
        let mut params = Vec::new();
        for (j, s) in settings.iter().enumerate() {
            for step in 0..3u32 {
                params.push(at(s, vocab, ctx.len(), step * 1000 + j as u32, params.len()));
            }
        }
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        let (got, got_ids) = gpu_sample(&logits, &ids, &params);
        let (want, want_ids) = twin_sample(&logits, &ids, &params);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "vocab {vocab} scale {scale}: draw {i} {:?}", settings[i / 3]);
        }
        assert_eq!(got_ids, want_ids);
    }
}

#[test]
fn sample_candidates_agree_with_cpu_sampler() {
    // The candidate set is the CPU sampler's: top-k then the smallest top-p prefix of the sorted softmax.
    for (vocab, scale, k, top_p, seed) in
        [(49152usize, 5.0f32, 40usize, 0.9f32, 30u64), (1007, 2.0, 0, 0.5, 31), (1007, 8.0, 100, 0.99, 32)]
    {
        let logits = logits_for(vocab, scale, seed);
        let s = sp(0.8, k, top_p, 1.0, seed);
        let mut idx: Vec<usize> = (0..vocab).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if k > 0 {
            idx.truncate(k);
        }
        let max = logits[idx[0]];
        let probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] - max) / 0.8) as f64).map(f64::exp).collect();
        let total: f64 = probs.iter().sum();
        let mut cum = 0.0;
        let keep = probs.iter().position(|q| {
            cum += q / total;
            cum >= top_p as f64
        });
        let kept = &idx[..keep.map_or(idx.len(), |i| i + 1)];
        let params: Vec<_> = (0..20).map(|j| at(&s, vocab, 0, j as u32, j)).collect();
        let ids = vec![0u32; params.len()];
        let (got, _) = gpu_sample(&logits, &ids, &params);
        for r in &got {
            assert_eq!(r.candidates as usize, kept.len(), "vocab {vocab} k {k} p {top_p}");
            assert!(kept.contains(&(r.token as usize)), "token {} outside the CPU's candidates", r.token);
        }
    }
}

#[test]
fn top_k_one_is_greedy() {
    for (vocab, seed) in [(49152usize, 40u64), (1007, 41)] {
        let mut logits = logits_for(vocab, 4.0, seed);
        let ctx = context(vocab, 30, seed);
        let mut params = Vec::new();
        for j in 0..6 {
            let s = sp(0.3 + j as f32 * 0.4, 1, if j % 2 == 0 { 1.0 } else { 0.3 }, 1.15, seed + j as u64);
            params.push(at(&s, vocab, ctx.len(), j as u32, j));
        }
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        let greedy = Sampler::new(sp(0.0, 0, 1.0, 1.15, 0)).expect("sampler").sample(&logits, &ctx);
        let (got, _) = gpu_sample(&logits, &ids, &params);
        for r in &got {
            assert_eq!((r.token, r.candidates, r.status), (greedy, 1, sample::STATUS_SAMPLED));
        }
        // A tie at the max: top-k = 1 keeps the lower id, like greedy.
        let top = logits.iter().copied().fold(f32::MIN, f32::max) + 1.0;
        logits[vocab - 2] = top;
        logits[vocab / 2] = top;
        let params = [at(&sp(1.0, 1, 1.0, 1.0, 3), vocab, 0, 0, 0)];
        let (got, _) = gpu_sample(&logits, &[0], &params);
        assert_eq!(got[0].token as usize, vocab / 2);
        assert_eq!(got, twin_sample(&logits, &[0], &params).0);
    }
}

#[test]
fn top_k_and_top_p_split_ties_by_index() {
    let vocab = 1000 + 7;
    let mut logits: Vec<f32> = random(vocab, 45).iter().map(|v| v - 2.0).collect();
    for i in [800, 10, 500, 3, 999] {
        logits[i] = 2.0;
    }
    for i in [900, 7] {
        logits[i] = 3.0;
    }
    // top-k 4: both 3.0s and the two lowest-index 2.0s. A high temperature makes all four likely.
    let params: Vec<_> = (0..200).map(|j| at(&sp(50.0, 4, 1.0, 1.0, 5), vocab, 0, j as u32, j)).collect();
    let ids = vec![0u32; params.len()];
    let (got, _) = gpu_sample(&logits, &ids, &params);
    assert_eq!(got, twin_sample(&logits, &ids, &params).0);
    let mut tokens: Vec<u32> = got.iter().map(|r| r.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens, [3, 7, 10, 900]);
    assert!(got.iter().all(|r| r.candidates == 4));

    // top-p 0.5 over four equal tokens: the two lowest ids (each 1/4, together 1/2).
    let mut flat = vec![-40.0f32; vocab];
    for i in [600, 20, 300, 1000] {
        flat[i] = 10.0;
    }
    let params: Vec<_> = (0..100).map(|j| at(&sp(1.0, 0, 0.5, 1.0, 6), vocab, 0, j as u32, j)).collect();
    let (got, _) = gpu_sample(&flat, &ids[..100], &params);
    assert_eq!(got, twin_sample(&flat, &ids[..100], &params).0);
    let mut tokens: Vec<u32> = got.iter().map(|r| r.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens, [20, 300]);
    assert!(got.iter().all(|r| r.candidates == 2));
}

#[test]
#[ignore = "timing on the test adapter: cargo test --test kernels_persona sample_timing -- --ignored --nocapture"]
fn sample_timing() {
    let vocab = 151_936;
    let logits = logits_for(vocab, 6.0, 99);
    let ctx = context(vocab, 512, 98);
    for (what, s) in [
        ("greedy", sp(0.0, 0, 1.0, 1.0, 0)),
        ("T=1", sp(1.0, 0, 1.0, 1.0, 1)),
        ("T=0.7 k=40 p=0.9 penalty 1.1", SamplingParams::default()),
        ("T=1 p=0.9", sp(1.0, 0, 0.9, 1.0, 1)),
    ] {
        let params: Vec<_> = (0..10).map(|j| at(&s, vocab, ctx.len(), j as u32, j)).collect();
        let mut ids = ctx.clone();
        ids.resize(ctx.len() + params.len(), 0);
        gpu_sample(&logits, &ids, &params[..1]);
        let t = std::time::Instant::now();
        gpu_sample(&logits, &ids, &params);
        eprintln!("sample {what}, vocab {vocab}: {:.1} ms per draw", t.elapsed().as_secs_f64() * 100.0);
    }
}

#[test]
fn sampling_is_reproducible_and_follows_the_distribution() {
    let vocab = 1000 + 7;
    let logits = logits_for(vocab, 3.0, 50);
    let s = sp(1.0, 0, 1.0, 1.0, 1234);
    let draws = 1500;
    // Half the draws vary the step, half the seed.
    let params: Vec<_> = (0..draws)
        .map(|j| {
            let mut p = at(&s, vocab, 0, (j % 750) as u32, j);
            if j >= 750 {
                p.seed_lo = 99 + j as u32;
            }
            p
        })
        .collect();
    let ids = vec![0u32; draws];
    let (got, _) = gpu_sample(&logits, &ids, &params);
    let (want, _) = twin_sample(&logits, &ids, &params);
    assert_eq!(got, want, "GPU vs twin over {draws} draws");
    // Same seed and step, same token.
    let (again, _) = gpu_sample(&logits, &ids[..8], &params[..8]);
    assert_eq!(again, got[..8]);

    // Loose chi-square over 10 bins of about equal probability (9 degrees of freedom; 40 is p < 1e-5).
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let w: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
    let mut bin_of = vec![0usize; vocab];
    let mut cum = 0.0;
    for &i in &order {
        bin_of[i] = ((cum / total * 10.0) as usize).min(9);
        cum += w[i];
    }
    let mut expected = [0f64; 10];
    let mut seen = [0f64; 10];
    for i in 0..vocab {
        expected[bin_of[i]] += w[i] / total * draws as f64;
    }
    for r in &got {
        seen[bin_of[r.token as usize]] += 1.0;
    }
    let chi2: f64 = (0..10).filter(|&b| expected[b] > 0.0).map(|b| (seen[b] - expected[b]).powi(2) / expected[b]).sum();
    let mut distinct: Vec<u32> = got.iter().map(|r| r.token).collect();
    distinct.sort_unstable();
    distinct.dedup();
    eprintln!("chi2 {chi2:.1} over 10 bins, {} distinct tokens in {draws} draws", distinct.len());
    assert!(chi2 < 40.0, "draws do not follow the softmax: chi2 {chi2}, seen {seen:?}, expected {expected:?}");
    assert!(distinct.len() > 200, "only {} distinct tokens", distinct.len());
}

#[test]
fn sample_falls_back_when_nothing_has_weight() {
    let vocab = 1007;
    let mut logits = vec![f32::NEG_INFINITY; vocab];
    logits[9] = f32::NAN;
    let mut params = vec![at(&sp(1.0, 0, 0.9, 1.0, 1), vocab, 0, 0, 0)];
    let mut inf = logits_for(vocab, 1.0, 60);
    inf[77] = f32::INFINITY;
    params.push(at(&sp(1.0, 5, 1.0, 1.0, 1), vocab, 0, 0, 1));
    let (a, _) = gpu_sample(&logits, &[0, 0], &params[..1]);
    assert_eq!((a[0].token, a[0].status), (0, sample::STATUS_FALLBACK));
    let (b, _) = gpu_sample(&inf, &[0, 0], &params[1..]);
    assert_eq!((b[0].token, b[0].status), (77, sample::STATUS_FALLBACK));
    assert_eq!(a, twin_sample(&logits, &[0, 0], &params[..1]).0);
    assert_eq!(b, twin_sample(&inf, &[0, 0], &params[1..]).0);
}

#[test]
fn sample_params_reject_bad_input() {
    assert!(sample::Params::new(&sp(-1.0, 0, 1.0, 1.0, 0), 10).is_err());
    assert!(sample::Params::new(&sp(1.0, 0, 0.0, 1.0, 0), 10).is_err());
    assert!(sample::Params::new(&sp(1.0, 0, 1.0, 1.0, 0), 0).is_err());
    let mut p = sample::Params::new(&sp(1.0, 0, 1.0, 1.1, 0), 100).expect("valid");
    assert!(p.check(100, 1, 100, 4).is_ok());
    p.ctx_len = 2;
    assert!(p.check(100, 1, 100, 4).is_err(), "context past the ids");
    p.ctx_len = 0;
    p.logits_offset = 1;
    assert!(p.check(100, 1, 100, 4).is_err(), "logits row past the end");
    let mut out = vec![0u32; 4];
    assert!(twins::sample(&p, &[0.0; 100], &mut [0], &mut out).is_err());
}

/// Random directions `[traits][layers]`, some absent, one of the wrong length, one zero.
fn trait_vectors(traits: usize, layers: usize, d: usize, seed: u64) -> Vec<Vec<Option<Vec<f32>>>> {
    (0..traits)
        .map(|t| {
            (0..layers)
                .map(|l| {
                    if t == 1 && l == 1 {
                        Some(vec![1.0; d + 1])
                    } else if t == 2 && l == 2 {
                        Some(vec![0.0; d])
                    } else if (t * 7 + l * 3) % 5 == 0 {
                        None
                    } else {
                        Some(random(d, seed + (t * layers + l) as u64).iter().map(|v| v * 3.0).collect())
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn project_matches_twin_and_cpu_monitor() {
    let gpu = gpu();
    let k = pollster::block_on(Project::new(gpu)).expect("compile project");
    let mut worst = (0f32, 0f32);
    for (traits, layers, d, seed) in [(16usize, 31usize, 576usize, 70u64), (3, 31, 96, 71), (1, 1, 33, 72)] {
        let vectors = trait_vectors(traits, layers, d, seed);
        let packed = project::pack(&vectors, layers, d);
        let capture = random(layers * d, seed + 1000);
        let p = project::Params { traits: traits as u32, layers: layers as u32, d: d as u32, scores_offset: 4 };
        let slots = traits * layers;
        let out_len = 4 + slots + 3;
        let sentinel = 0xdead_beef;
        let (cb, ub) = (storage_f32(gpu, "capture", &capture), storage_f32(gpu, "units", &packed.units));
        let mb = storage(gpu, "mask", bytemuck::cast_slice(&packed.mask));
        let ob = storage(gpu, "out", bytemuck::cast_slice(&vec![sentinel; out_len]));
        let bind = k.bind(gpu, &Project::params(gpu, &p), &cb, &ub, &mb, &ob);
        run(gpu, |pass| k.dispatch(pass, &bind, &p));
        let got = read_u32(gpu, &ob, out_len);
        let mut want = vec![sentinel; out_len];
        twins::project(&p, &capture, &packed.units, &packed.mask, &mut want).expect("twin");
        assert_eq!(&got[..4], &[sentinel; 4], "words before the scores untouched");
        assert_eq!(&got[4 + slots..], &[sentinel; 3], "words after the scores untouched");

        // The CPU monitor on the same residuals (one token, every layer).
        let mut monitor = Projection::new(vectors.clone(), 0..1);
        for l in 0..layers {
            monitor.on_residual(l, 0, &mut capture[l * d..(l + 1) * d].to_vec(), d);
        }
        let cpu: Vec<f32> = monitor.scores[0].1.iter().flatten().copied().collect();
        let as_f32 = |w: &[u32]| w[4..4 + slots].iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>();
        let (g, t) = (as_f32(&got), as_f32(&want));
        for s in 0..slots {
            assert_eq!(g[s].is_nan(), cpu[s].is_nan(), "slot {s}: NaN exactly where the CPU monitor has none");
        }
        let on = |v: &[f32]| v.iter().copied().filter(|x| !x.is_nan()).collect::<Vec<f32>>();
        assert_close(&format!("project {traits}x{layers}x{d} vs twin"), &on(&g), &on(&t), PROJECT_ABS, PROJECT_REL);
        assert_close(
            &format!("project {traits}x{layers}x{d} vs CPU"),
            &on(&g),
            &on(&cpu),
            PROJECT_CPU_ABS,
            PROJECT_CPU_REL,
        );
        worst = (worst.0.max(max_abs_diff(&on(&g), &on(&t))), worst.1.max(max_abs_diff(&on(&g), &on(&cpu))));
    }
    eprintln!("project: max |gpu - twin| {:e}, max |gpu - cpu monitor| {:e}", worst.0, worst.1);
}

#[test]
fn steer_matches_twin_and_cpu_hook() {
    let gpu = gpu();
    let k = pollster::block_on(SteerKernel::new(gpu)).expect("compile steer");
    let mut worst = 0f32;
    for (d, rows, pos0, seed) in [(576usize, 7usize, 10usize, 80u64), (96, 13, 0, 81), (96, 1, 41, 82)] {
        let vec_of = |s: u64| random(d, s);
        // Layer 3: two overlapping entries and one that misses every row; layer 5: an open-ended one; one vector
        // of the wrong length (skipped, as the CPU hook skips it).
        let steer = Steer(vec![
            Steering { layer: 3, vector: vec_of(seed + 1), alpha: 2.0, positions: 12..15 },
            Steering { layer: 5, vector: vec_of(seed + 2), alpha: -1.5, positions: pos0 + rows - 1..usize::MAX },
            Steering { layer: 3, vector: vec_of(seed + 3), alpha: 0.5, positions: 0..14 },
            Steering { layer: 3, vector: vec_of(seed + 4), alpha: 9.0, positions: 1000..2000 },
            Steering { layer: 3, vector: vec![1.0; d + 2], alpha: 1.0, positions: 0..usize::MAX },
        ]);
        let packed = steer::pack(&steer, d);
        assert_eq!(packed.layers.iter().map(|l| (l.layer, l.count)).collect::<Vec<_>>(), [(3, 3), (5, 1)]);
        let vb = storage_f32(gpu, "vectors", &packed.vectors);
        let eb = storage(gpu, "entries", bytemuck::cast_slice(&packed.entries));
        for le in &packed.layers {
            // x sits after one spare row, to exercise x_offset.
            let x0 = random((rows + 1) * d, seed + 10 + le.layer as u64);
            let p = le.params(rows as u32, d as u32, pos0 as u32, d as u32);
            let xb = storage_f32(gpu, "x", &x0);
            let bind = k.bind(gpu, &SteerKernel::params(gpu, &p), &xb, &vb, &eb);
            run(gpu, |pass| k.dispatch(pass, &bind, &p));
            let got = pollster::block_on(read_f32(gpu, &xb, x0.len())).expect("read");
            let mut want = x0.clone();
            twins::steer(&p, &mut want, &packed.vectors, &packed.entries).expect("twin");
            let mut cpu = x0.clone();
            steer.clone().on_residual(le.layer as usize, pos0, &mut cpu[d..], d);
            let what = format!("steer d {d} rows {rows} pos0 {pos0} layer {}", le.layer);
            assert_close(&format!("{what} vs twin"), &got, &want, STEER_ABS, STEER_REL);
            assert_close(&format!("{what} vs CPU hook"), &got, &cpu, STEER_ABS, STEER_REL);
            worst = worst.max(max_abs_diff(&got, &want)).max(max_abs_diff(&got, &cpu));
            // Rows no entry covers (and the spare row) are bit for bit untouched.
            for r in 0..=rows {
                let pos = (pos0 + r).wrapping_sub(1);
                let covered = r > 0
                    && steer
                        .0
                        .iter()
                        .any(|s| s.layer == le.layer as usize && s.vector.len() == d && s.positions.contains(&pos));
                let (g, x) = (&got[r * d..(r + 1) * d], &x0[r * d..(r + 1) * d]);
                let same = g.iter().zip(x).all(|(a, b)| a.to_bits() == b.to_bits());
                assert_eq!(same, !covered, "{what}: row {r} (position {pos}) covered {covered}");
            }
        }
    }
    eprintln!("steer: max |gpu - twin or cpu| {worst:e}");
}

#[test]
fn accumulate_is_bit_identical_to_twin() {
    let gpu = gpu();
    let k = pollster::block_on(Accumulate::new(gpu)).expect("compile accumulate");
    for (d, layers, seed) in [(576usize, 31usize, 90u64), (96, 31, 91)] {
        let layer = 17usize;
        let sums0 = random(layers * d, seed);
        let mut sums_want = sums0.clone();
        let mut cap_want = vec![0f32; layers * d];
        let sb = storage_f32(gpu, "sums", &sums0);
        let cb = storage_zeroed(gpu, "capture", (layers * d * 4) as u64);
        // A prefill of 9 rows at positions 0..9 whose response starts at 5, then two decode rows (positions 9, 10),
        // then a row outside the range; each also captures its last row.
        let steps: [(usize, usize, u32); 4] = [(9, 0, 0), (1, 9, 1), (1, 10, 2), (1, 30, 3)];
        let mut plain: Vec<f64> = sums0[layer * d..(layer + 1) * d].iter().map(|&v| v as f64).collect();
        for (rows, pos0, s) in steps {
            let x = random(rows * d + d, seed + 100 + s as u64);
            let p = accumulate::Params {
                rows: rows as u32,
                d: d as u32,
                pos0: pos0 as u32,
                start: 5,
                end: 20,
                x_offset: d as u32,
                sum_offset: (layer * d) as u32,
                capture_offset: (layer * d) as u32,
                capture_row: rows as u32 - 1,
                flags: accumulate::SUM | accumulate::CAPTURE,
                _pad: [0; 2],
            };
            let xb = storage_f32(gpu, "x", &x[..(rows + 1) * d]);
            let bind = k.bind(gpu, &Accumulate::params(gpu, &p), &xb, &sb, &cb);
            run(gpu, |pass| k.dispatch(pass, &bind, &p));
            twins::accumulate(&p, &x[..(rows + 1) * d], &mut sums_want, &mut cap_want).expect("twin");
            for r in (0..rows).filter(|r| (5..20).contains(&(pos0 + r))) {
                plain.iter_mut().zip(&x[(r + 1) * d..(r + 2) * d]).for_each(|(a, &v)| *a += v as f64);
            }
        }
        let sums = pollster::block_on(read_f32(gpu, &sb, layers * d)).expect("read");
        let cap = pollster::block_on(read_f32(gpu, &cb, layers * d)).expect("read");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&sums), bits(&sums_want), "d {d}: running sums");
        assert_eq!(bits(&cap), bits(&cap_want), "d {d}: capture");
        // Only this layer's slot changed.
        assert_eq!(bits(&sums[..layer * d]), bits(&sums0[..layer * d]));
        assert_eq!(bits(&sums[(layer + 1) * d..]), bits(&sums0[(layer + 1) * d..]));
        // And the sums are what a plain f64 reading of the rows at positions 5..=10 gives.
        let plain: Vec<f32> = plain.iter().map(|&v| v as f32).collect();
        assert_close("accumulate vs f64", &sums[layer * d..(layer + 1) * d], &plain, ACCUMULATE_F64_ABS, 0.0);
    }
}
