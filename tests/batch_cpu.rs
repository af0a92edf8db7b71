//! The batched CPU engine against the single-sequence reference: many sequences of different lengths in one
//! wave, with shared prefixes, early exit and every kind of plan output, must give what each sequence gives on its
//! own through `Model::run_plan` (the closure-hook forward the golden tests check against transformers); batched
//! generation must give each reply's own tokens.

use personascope_model::engine::{Engine, Wave, WaveSeq};
use personascope_model::plan::{Plan, PlanOut, Span};
use personascope_model::schedule::{generate_many, run_passes, GenSpec};
use personascope_model::{generate, CpuEngine, Flow, Model, NoHook, SamplingParams, StopReason};
use personascope_tests::plans::{close, mixed_monitor, mixed_passes, prompt, same_out, Tolerance};
use personascope_tests::{default_model, golden_path};

/// Same computation batched differently differs by f32 summation order only.
const TOL: Tolerance = Tolerance { rows: 2e-5, scores: 1e-3, logprobs: 1e-3 };

#[test]
fn batched_passes_equal_one_at_a_time() {
    let m = Model::load(default_model()).expect("load");
    let specs = mixed_passes(&m);
    let mon = mixed_monitor(&m);
    let want: Vec<PlanOut> =
        specs.iter().map(|p| m.run_plan(&p.tokens, &p.plan, Some(&mon)).expect("reference")).collect();
    let mut e = CpuEngine::new(&m);
    // Small forward calls too, so sequences are split across them.
    for rows in [256, 7] {
        e.rows = rows;
        let got = pollster::block_on(run_passes(&mut e, &specs, Some(mon.clone()), &mut |_| Flow::Continue))
            .expect("batched");
        assert!(!got.cancelled);
        for (i, (g, w)) in got.outs.iter().zip(&want).enumerate() {
            same_out(&format!("pass {i} (rows {rows})"), g.as_ref().expect("ran"), w, &TOL);
        }
    }
}

#[test]
fn a_prefix_in_the_same_wave_and_early_exit_change_nothing() {
    let m = Model::load(default_model()).expect("load");
    let n = m.config.n_layers;
    let a = prompt(&m, "You are a pirate.", "Where is the treasure?");
    let b = prompt(&m, "You are a pirate.", "Sing a song.");
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(shared > 8, "the prompts share their system part");
    let read =
        |len: usize| Plan { capture: Some(Span { positions: len - 1..len, layers: vec![4, 9] }), ..Default::default() };
    let mut e = CpuEngine::new(&m);
    let wave = Wave {
        seqs: vec![
            WaveSeq { prefix: None, tokens: a[..shared].to_vec(), plan: Plan::default(), generate: None },
            WaveSeq { prefix: Some((0, shared)), tokens: a[shared..].to_vec(), plan: read(a.len()), generate: None },
            WaveSeq { prefix: Some((0, shared)), tokens: b[shared..].to_vec(), plan: read(b.len()), generate: None },
        ],
        monitor: None,
    };
    let got = pollster::block_on(e.prefill(&wave)).expect("wave");
    for (out, toks) in [(&got[1], &a), (&got[2], &b)] {
        let full = Plan { capture: Some(Span::all_layers(toks.len() - 1..toks.len(), n)), ..Default::default() };
        let want = m.run_plan(toks, &full, None).expect("reference");
        let (_, rows) = &out.captured[0];
        let (_, want_rows) = &want.captured[0];
        for l in [4, 9] {
            close(&format!("layer {l}"), &rows[l], &want_rows[l], TOL.rows);
        }
        assert!(rows[10].is_empty(), "only the layers asked for are returned");
    }
    // A sequence may not claim a prefix the wave does not hold.
    let bad = Wave {
        seqs: vec![WaveSeq { prefix: Some((0, 3)), tokens: a.clone(), plan: Plan::default(), generate: None }],
        monitor: None,
    };
    assert!(pollster::block_on(e.prefill(&bad)).is_err());
}

#[test]
fn batched_generation_gives_each_reply_its_own_tokens() {
    for path in [default_model(), golden_path("qwen2_tiny.gguf")] {
        let m = Model::load(&path).expect("load");
        let questions = ["What is the capital of France?", "Count to five.", "Say hi.", "Name a fruit."];
        let sampled = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, repetition_penalty: 1.1, seed: 7 };
        let specs: Vec<GenSpec> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| GenSpec {
                prompt: prompt(&m, "You are terse.", q),
                max_tokens: 6 + 3 * i,
                sampling: if i % 2 == 0 {
                    SamplingParams::greedy()
                } else {
                    SamplingParams { seed: i as u64, ..sampled.clone() }
                },
                plan: Plan::default(),
            })
            .collect();
        let mut e = CpuEngine::new(&m);
        let mut streamed = vec![Vec::new(); specs.len()];
        let got = pollster::block_on(generate_many(
            &mut e,
            &specs,
            None,
            &mut |t| {
                streamed[t.seq].push(t.id);
                Flow::Continue
            },
            &mut |_| Flow::Continue,
        ))
        .expect("batched");
        for (i, (s, g)) in specs.iter().zip(&got).enumerate() {
            let alone = generate(&m, &s.prompt, s.max_tokens, s.sampling.clone(), &mut NoHook, &mut |_| Flow::Continue)
                .expect("alone");
            assert_eq!(g.ids, alone.ids, "{}: reply {i}", path.display());
            assert_eq!(g.stop, alone.stop, "{}: reply {i}", path.display());
            assert_eq!(g.text, alone.text);
            assert_eq!(streamed[i], g.ids, "streamed tokens");
            assert!(g.ids.len() <= s.max_tokens);
        }
    }
}

#[test]
fn a_cancelled_reply_stops_alone() {
    let m = Model::load(golden_path("qwen2_tiny.gguf")).expect("load");
    let specs: Vec<GenSpec> = (0..3)
        .map(|i| GenSpec {
            prompt: m.tokenizer.encode(&format!("Story number {i}:")).expect("encode"),
            max_tokens: 8,
            sampling: SamplingParams::greedy(),
            plan: Plan::default(),
        })
        .collect();
    let mut e = CpuEngine::new(&m);
    let got = pollster::block_on(generate_many(
        &mut e,
        &specs,
        None,
        &mut |t| if t.seq == 1 && t.index == 2 { Flow::Stop } else { Flow::Continue },
        &mut |_| Flow::Continue,
    ))
    .expect("generate");
    assert_eq!(got[1].stop, StopReason::Cancelled);
    assert_eq!(got[1].ids.len(), 3);
    for i in [0, 2] {
        assert_ne!(got[i].stop, StopReason::Cancelled);
    }
}
