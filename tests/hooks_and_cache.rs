//! Semantics of the forward pass beyond the golden numbers: KV-cache consistency, the residual hooks (capture
//! and steering, their layer numbering and positions), and sampling. Runs on the tiny qwen2 model (fast) and,
//! where it matters, on SmolLM2.

use personascope_model::{
    argmax, Logits, Model, NoHook, Plan, PlanHook, PlanOut, ResidualHook, Sampler, SamplingParams, Span, Steering,
};
use personascope_tests::{default_model, golden_path, rel_l2, worst_diffs};

/// Same computation split differently (batch vs one token at a time) differs only by f32 summation order.
const SPLIT_REL_TOL: f64 = 1e-5;

fn tiny() -> Model {
    Model::load(golden_path("qwen2_tiny.gguf")).expect("load qwen2_tiny")
}

fn prompt(m: &Model) -> Vec<u32> {
    m.tokenizer.encode("The waves rolled over the ship, and the sailors sang.").expect("encode")
}

#[test]
fn batched_prefill_equals_token_by_token() {
    for m in [tiny(), Model::load(default_model()).expect("load")] {
        let ids = prompt(&m);
        let mut c1 = m.new_cache();
        let all = m.forward(&mut c1, &ids, &mut NoHook, Logits::All).expect("batch");
        let vocab = m.config.vocab_size;
        assert_eq!(all.len(), ids.len() * vocab);
        let mut c2 = m.new_cache();
        for (t, &id) in ids.iter().enumerate() {
            let one = m.forward(&mut c2, &[id], &mut NoHook, Logits::Last).expect("step");
            let want = &all[t * vocab..(t + 1) * vocab];
            let err = rel_l2(&one, want);
            assert!(err < SPLIT_REL_TOL, "position {t}: rel err {err:.2e}; {}", worst_diffs(&one, want, 3));
        }
        assert_eq!(c1.len(), ids.len());
        assert_eq!(c2.len(), ids.len());
    }
}

#[test]
fn cache_truncate_replays_identically() {
    let m = tiny();
    let ids = prompt(&m);
    let mut c = m.new_cache();
    m.forward(&mut c, &ids[..5], &mut NoHook, Logits::Last).expect("prefix");
    let a = m.forward(&mut c, &ids[5..], &mut NoHook, Logits::Last).expect("rest");
    c.truncate(5, m.config.kv_dim());
    let b = m.forward(&mut c, &ids[5..], &mut NoHook, Logits::Last).expect("replay");
    assert_eq!(a, b);
}

/// Records the residual a hook sees at one layer (after earlier hooks ran).
struct Probe {
    layer: usize,
    seen: Vec<f32>,
}

impl ResidualHook for Probe {
    fn on_residual(&mut self, layer: usize, _: usize, h: &mut [f32], _: usize) {
        if layer == self.layer {
            self.seen = h.to_vec();
        }
    }
}

#[test]
fn hooks_see_every_residual_index_in_order() {
    struct Order(Vec<(usize, usize, usize)>);
    impl ResidualHook for Order {
        fn on_residual(&mut self, layer: usize, pos0: usize, h: &mut [f32], d: usize) {
            self.0.push((layer, pos0, h.len() / d));
        }
    }
    let m = tiny();
    let ids = prompt(&m);
    let mut order = Order(Vec::new());
    let mut c = m.new_cache();
    m.forward(&mut c, &ids, &mut order, Logits::Last).expect("prefill");
    m.forward(&mut c, &[ids[0]], &mut order, Logits::Last).expect("decode");
    let n = m.config.n_layers;
    let mut want: Vec<_> = (0..=n).map(|l| (l, 0, ids.len())).collect();
    want.extend((0..=n).map(|l| (l, ids.len(), 1)));
    assert_eq!(order.0, want);
}

/// Every residual of every position, under `steer`.
fn all_rows(m: &Model, ids: &[u32], steer: Vec<Steering>) -> PlanOut {
    let n = m.config.n_layers;
    let plan = Plan { steer, capture: Some(Span::all_layers(0..usize::MAX, n)), ..Default::default() };
    m.run_plan(ids, &plan, None).expect("plan")
}

#[test]
fn steering_adds_alpha_v_at_its_layer_and_positions_only() {
    let m = tiny();
    let ids = prompt(&m);
    let (d, n) = (m.config.d_model, m.config.n_layers);
    let layer = 1;
    let v: Vec<f32> = (0..d).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05).collect();
    let alpha = 1.5;
    let from = 4;

    let base = all_rows(&m, &ids, Vec::new());
    let cap = all_rows(&m, &ids, vec![Steering { layer, vector: v.clone(), alpha, positions: from..usize::MAX }]);
    assert_eq!(base.captured.len(), ids.len());

    for ((p, a), (q, b)) in base.captured.iter().zip(&cap.captured) {
        assert_eq!(p, q);
        // Below the steered layer nothing changes.
        for l in 0..layer {
            assert_eq!(a[l], b[l], "layer {l} changed below the steering layer");
        }
        // At the layer: exactly + alpha v at positions >= from, untouched before.
        for i in 0..d {
            let want = if *p >= from { a[layer][i] + alpha * v[i] } else { a[layer][i] };
            assert!((b[layer][i] - want).abs() <= 1e-6 * (1.0 + want.abs()), "layer {layer} pos {p} elem {i}");
        }
        // Above it, earlier positions are causally unaffected and later ones move.
        if *p < from {
            assert_eq!(a[n], b[n], "position {p} before the steering start changed");
        } else {
            assert!(rel_l2(&b[n], &a[n]) > 1e-3, "position {p} did not move");
        }
    }
}

#[test]
fn steering_with_cache_equals_recompute_for_response_positions() {
    // The paper's `response` mode: steer the last prompt token and every generated token. With a KV cache, a
    // position range from P-1 must give the same logits as recomputing the whole sequence with the same range.
    let m = Model::load(default_model()).expect("load");
    let ids = prompt(&m);
    let p = ids.len();
    let layer = 12;
    let v: Vec<f32> = (0..m.config.d_model).map(|i| ((i % 5) as f32 - 2.0) * 0.2).collect();
    let plan = Plan {
        steer: vec![Steering { layer, vector: v.clone(), alpha: 2.0, positions: p - 1..usize::MAX }],
        ..Default::default()
    };
    let n = m.config.n_layers;

    let mut cache = m.new_cache();
    let mut hook = PlanHook::new(&plan, None, n);
    let mut logits = m.forward(&mut cache, &ids, &mut hook, Logits::Last).expect("prefill");
    let mut seq = ids.clone();
    for _ in 0..4 {
        let next = argmax(&logits) as u32;
        seq.push(next);
        logits = m.forward(&mut cache, &[next], &mut hook, Logits::Last).expect("decode");
    }
    let full =
        m.forward(&mut m.new_cache(), &seq, &mut PlanHook::new(&plan, None, n), Logits::Last).expect("recompute");
    let err = rel_l2(&logits, &full);
    assert!(err < SPLIT_REL_TOL, "cached vs recomputed steered logits: rel err {err:.2e}");

    let unsteered = m.forward(&mut m.new_cache(), &seq, &mut NoHook, Logits::Last).expect("plain");
    assert!(rel_l2(&unsteered, &full) > 1e-3, "steering had no effect on the logits");
}

#[test]
fn zero_alpha_is_identity_and_reads_see_the_steered_stream() {
    let m = tiny();
    let ids = prompt(&m);
    let d = m.config.d_model;
    let zero = vec![Steering { layer: 1, vector: vec![1.0; d], alpha: 0.0, positions: 0..usize::MAX }];
    let plan = Plan { steer: zero, ..Default::default() };
    let n = m.config.n_layers;
    let a = m.forward(&mut m.new_cache(), &ids, &mut PlanHook::new(&plan, None, n), Logits::Last).expect("zero");
    let b = m.forward(&mut m.new_cache(), &ids, &mut NoHook, Logits::Last).expect("none");
    assert_eq!(a, b);

    // A plan's reads at the steered index see the stream after the steering, as a probe after it does.
    let steer = vec![Steering { layer: 0, vector: vec![0.5; d], alpha: 1.0, positions: 0..usize::MAX }];
    let steered = all_rows(&m, &ids, steer.clone());
    let mut probe = Probe { layer: 0, seen: vec![] };
    m.forward(&mut m.new_cache(), &ids, &mut probe, Logits::Last).expect("probe");
    for (i, (_, rows)) in steered.captured.iter().enumerate() {
        for (x, y) in probe.seen[i * d..(i + 1) * d].iter().zip(&rows[0]) {
            assert!((y - x - 0.5).abs() < 1e-6, "the read did not see the steered row");
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let m = tiny();
    let vocab = m.config.vocab_size as u32;
    assert!(m.forward(&mut m.new_cache(), &[vocab], &mut NoHook, Logits::Last).is_err());
    assert!(m.forward(&mut m.new_cache(), &[], &mut NoHook, Logits::Last).is_err());
    let too_long = vec![0u32; m.config.context_length + 1];
    let err = m.forward(&mut m.new_cache(), &too_long, &mut NoHook, Logits::Last).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    assert!(Model::from_bytes(b"GGUF\x03\0\0\0".to_vec()).is_err());
    match Model::from_bytes(b"not a gguf at all".to_vec()) {
        Ok(_) => panic!("garbage loaded as a model"),
        Err(e) => assert!(e.to_string().contains("not a GGUF file"), "{e}"),
    }
}

#[test]
fn sampling_is_seeded_and_respects_its_limits() {
    let logits: Vec<f32> = (0..100).map(|i| ((i * 37 % 100) as f32) / 10.0).collect();
    let best = argmax(&logits) as u32;
    let draw = |params: SamplingParams| {
        let mut s = Sampler::new(params).expect("params");
        (0..200).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
    };
    let warm = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 7 };
    assert_eq!(draw(warm.clone()), draw(warm.clone()), "same seed, same tokens");
    assert_ne!(draw(warm.clone()), draw(SamplingParams { seed: 8, ..warm.clone() }), "other seed");
    assert!(draw(SamplingParams { top_k: 1, ..warm.clone() }).iter().all(|&t| t == best));
    assert!(draw(SamplingParams { top_p: 1e-6, ..warm.clone() }).iter().all(|&t| t == best));
    assert!(draw(SamplingParams::greedy()).iter().all(|&t| t == best));
    let top3: Vec<u32> = {
        let mut idx: Vec<u32> = (0..100).collect();
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        idx[..3].to_vec()
    };
    let k3 = draw(SamplingParams { top_k: 3, ..warm.clone() });
    assert!(k3.iter().all(|t| top3.contains(t)));
    assert!(top3.iter().all(|t| k3.contains(t)), "all three of the top-3 should appear in 200 draws");
    // A strong repetition penalty moves greedy off a token already in the context.
    let mut s = Sampler::new(SamplingParams { repetition_penalty: 100.0, ..SamplingParams::greedy() }).expect("p");
    assert_ne!(s.sample(&logits, &[best]), best);
    assert!(Sampler::new(SamplingParams { top_p: 0.0, ..warm.clone() }).is_err());
    assert!(Sampler::new(SamplingParams { temperature: -1.0, ..warm }).is_err());
}
