//! The persona toolkit on the real SmolLM2-135M-Instruct: both backends agree, extraction gives a vector that
//! separates held-out prompts, steering moves the reference-answer margin, monitoring is calibrated, screening
//! ranks and keeps partial results, and vector files survive the trip to disk. Sizes are kept small (the CPU runs
//! on 2 cores, the GPU on lavapipe).

use personascope_gpu::{AdapterChoice, EngineOptions, Gpu, GpuModel};
use personascope_model::schedule::{GenSpec, PassSpec};
use personascope_model::{CpuEngine, Flow, Model, Plan, PlanOut, SamplingParams, Span, Steering};
use personascope_persona::backend::{self, Backend};
use personascope_persona::extract::{self, ExtractOptions, KeepNonEmpty, Mode};
use personascope_persona::monitor::{self, Reading};
use personascope_persona::screen::{self, ScreenOptions};
use personascope_persona::steer::Positions;
use personascope_persona::{builtin_by_name, dataset, eval, stats, vector_file};
use personascope_tests::{default_model, rel_l2};
use std::sync::OnceLock;

fn cpu() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(default_model()).expect("load SmolLM2 (run bash models/fetch.sh)"))
}

fn gpu_model() -> GpuModel {
    let gpu = Gpu::request_blocking(AdapterChoice::Fallback, personascope_gpu::wgpu::Backends::VULKAN)
        .expect("no Vulkan adapter; install Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1");
    assert_eq!(gpu.adapter.backend, personascope_gpu::wgpu::Backend::Vulkan, "tests must run on Vulkan");
    let bytes = std::fs::read(default_model()).expect("read model");
    let opts = EngineOptions { max_positions: 256, batch: 32, max_traits: 4, head_rows: 8, out_floats: 1 << 20 };
    pollster::block_on(GpuModel::load(gpu, &bytes, opts)).expect("load on GPU")
}

/// One pass through the backend's batch path.
fn pass<B: Backend>(b: &mut B, tokens: &[u32], plan: Plan) -> PlanOut {
    let spec = PassSpec { tokens: tokens.to_vec(), plan };
    pollster::block_on(backend::all_passes(b, &[spec], None, &mut |_| Flow::Continue)).expect("pass").remove(0)
}

/// The last token's rows at every residual index.
fn last<B: Backend>(b: &mut B, tokens: &[u32]) -> Vec<Vec<f32>> {
    let out = pass(b, tokens, backend::last_token_plan(tokens.len(), b.config().n_layers));
    backend::last_rows(&out).expect("rows").clone()
}

/// A prompt-last vector from 3 extraction questions x 2 pairs (fast), shared by the tests below.
fn impolite_vector() -> &'static vector_file::TraitVector {
    static V: OnceLock<vector_file::TraitVector> = OnceLock::new();
    V.get_or_init(|| {
        let def = builtin_by_name("impolite").expect("built in");
        let opts = ExtractOptions { mode: Mode::PromptLast, pairs: Some(2), questions: Some(3), ..Default::default() };
        let mut b = CpuEngine::new(cpu());
        let ex = pollster::block_on(extract::extract(&mut b, &def, &opts, &mut KeepNonEmpty, &mut |_| Flow::Continue))
            .expect("extract");
        assert_eq!(ex.kept, [6, 6]);
        let mut v = ex.vector;
        v.meta.layer = Some(16);
        v.meta.screen_layer = Some(20);
        v.meta.calibration =
            Some(pollster::block_on(monitor::calibrate(&mut b, &v, &monitor::neutral_set()[..6])).expect("calibrate"));
        v
    })
}

#[test]
fn backends_agree_on_a_pass_and_a_steered_generation() {
    let m = cpu();
    let mut g = gpu_model();
    let mut cb = CpuEngine::new(m);
    let prompt = cb.chat_prompt(Some("You are a helpful assistant."), "Name a colour.").expect("prompt");
    let answer = m.tokenizer.encode("Blue is a colour.").expect("encode");
    let p = prompt.len();
    let tokens: Vec<u32> = prompt.iter().chain(&answer).copied().collect();
    let n = tokens.len();
    let (d, layers) = (m.config.d_model, m.config.n_layers);
    // A steering vector that matters: a random direction of norm 20 at residual index 10, response positions.
    let dir: Vec<f32> = (0..d).map(|i| (i * 7919 % 101) as f32 / 50.0 - 1.0).collect();
    let scale = 20.0 / stats::norm(&dir);
    let steer = vec![Steering {
        layer: 10,
        vector: dir.iter().map(|x| x * scale).collect(),
        alpha: 1.0,
        positions: Positions::Response.range(p),
    }];
    let plan = Plan {
        steer: steer.clone(),
        mean: Some(Span::all_layers(p..n, layers)),
        capture: Some(Span::all_layers(n - 2..n, layers)),
        logprobs: Some(p..n),
        ..Default::default()
    };
    let want = pass(&mut cb, &tokens, plan.clone());
    let got = pass(&mut g, &tokens, plan);
    for l in [0, 10, 11, 30] {
        let e = rel_l2(&got.mean.as_ref().expect("mean")[l], &want.mean.as_ref().expect("mean")[l]);
        assert!(e < 1e-4, "mean residual at {l}: rel err {e:.2e}");
        for k in 0..2 {
            let e = rel_l2(&got.captured[k].1[l], &want.captured[k].1[l]);
            assert!(e < 1e-4, "captured position {k} at {l}: rel err {e:.2e}");
        }
    }
    assert_eq!(got.logprobs.len(), answer.len());
    for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
        assert!((a - b).abs() < 2e-3, "log-prob gpu {a} cpu {b}");
        assert!(*b < 0.0);
    }
    // The steering is real: the unsteered pass differs at and after its layer only.
    let plain = last(&mut cb, &tokens);
    let steered = &want.captured[1].1;
    assert!(rel_l2(&plain[9], &steered[9]) < 1e-6);
    assert!(rel_l2(&plain[10], &steered[10]) > 1e-2);

    // Steered, monitored greedy generation: same tokens and scores on both backends.
    let raw = vec![(0..=layers).map(|l| (l == 12).then(|| dir.clone())).collect::<Vec<_>>()];
    let monitor = personascope_model::plan::units(&raw);
    let spec = GenSpec {
        prompt: prompt.clone(),
        max_tokens: 6,
        sampling: SamplingParams::greedy(),
        plan: Plan { steer: steer.clone(), project: Some(p - 1..usize::MAX), ..Default::default() },
    };
    let specs = std::slice::from_ref(&spec);
    let go = || Flow::Continue;
    let cpu_reply =
        pollster::block_on(backend::generate(&mut cb, specs, Some(monitor.clone()), &mut |_| go(), &mut |_| go()))
            .expect("cpu generate")
            .remove(0);
    let gpu_reply =
        pollster::block_on(backend::generate(&mut g, specs, Some(monitor.clone()), &mut |_| go(), &mut |_| go()))
            .expect("gpu generate")
            .remove(0);
    assert_eq!(gpu_reply.ids, cpu_reply.ids, "steered greedy tokens");
    assert_eq!(cpu_reply.scores.len(), cpu_reply.ids.len());
    for (a, b) in gpu_reply.scores.iter().zip(&cpu_reply.scores) {
        let (a, b) = (a[0][12], b[0][12]);
        assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "score gpu {a} cpu {b}");
        assert!(a.is_finite() && b.is_finite());
        assert!(cpu_reply.scores[0][0][11].is_nan(), "unmonitored layers are NaN");
    }
    // The pre-generation reading is the steered prompt pass's last token projected on the unit direction.
    let pre = pass(&mut cb, &prompt, Plan { steer, ..backend::last_token_plan(p, layers) });
    let want = stats::dot(&backend::last_rows(&pre).expect("rows")[12], &dir) / stats::norm(&dir);
    for (name, r) in [("cpu", &cpu_reply), ("gpu", &gpu_reply)] {
        let got = r.prompt_scores[0][12];
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{name} prompt score {got}, pass says {want}");
    }
}

#[test]
fn gpu_extraction_equals_cpu_extraction() {
    // The whole batched job on both engines (shared system-prompt prefixes, several waves on the GPU's small
    // limits) gives the same vector.
    let def = builtin_by_name("humorous").expect("built in");
    let opts = ExtractOptions { mode: Mode::PromptLast, pairs: Some(2), questions: Some(4), ..Default::default() };
    let cpu_v =
        pollster::block_on(extract::extract(&mut CpuEngine::new(cpu()), &def, &opts, &mut KeepNonEmpty, &mut |_| {
            Flow::Continue
        }))
        .expect("cpu extract");
    let mut g = gpu_model();
    let gpu_v = pollster::block_on(extract::extract(&mut g, &def, &opts, &mut KeepNonEmpty, &mut |_| Flow::Continue))
        .expect("gpu extract");
    assert_eq!(cpu_v.kept, gpu_v.kept);
    for l in 1..cpu_v.vector.rows.len() {
        let e = rel_l2(&gpu_v.vector.rows[l], &cpu_v.vector.rows[l]);
        assert!(e < 1e-3, "layer {l}: rel err {e:.2e}");
    }
}

#[test]
fn extracted_vector_separates_held_out_prompts_and_round_trips() {
    let v = impolite_vector();
    assert_eq!(v.rows.len(), 31);
    assert_eq!(v.meta.mode.as_deref(), Some("prompt-last"));
    assert_eq!(v.meta.counts, Some([6, 6]));
    // The raw mean difference is not normalized: its norm grows with depth (docs/method.md §3.2).
    assert!(stats::norm(&v.rows[20]) > 5.0 * stats::norm(&v.rows[5]));

    // Held-out: evaluation questions, pairs 3 and 4 (not used for extraction).
    let def = builtin_by_name("impolite").expect("built in");
    let mut b = CpuEngine::new(cpu());
    let unit = stats::unit(&v.rows[16]).expect("nonzero");
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for q in def.evaluation_questions.iter().take(3) {
        for pair in 3..5 {
            for positive in [true, false] {
                let sys = def.system_prompt(pair, positive).expect("pair");
                let ids = b.chat_prompt(Some(&sys), &q.question).expect("prompt");
                let s = stats::dot(&last(&mut b, &ids)[16], &unit);
                if positive {
                    pos.push(s)
                } else {
                    neg.push(s)
                }
            }
        }
    }
    let auroc = stats::auroc(&pos, &neg);
    println!("held-out AUROC at layer 16 from a 6-sample vector: {auroc:.3}");
    assert!(auroc >= 0.9, "held-out separation {auroc}");

    let dir = std::env::temp_dir().join(format!("personascope-toolkit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("impolite.gguf");
    vector_file::save(&path, v).expect("save");
    let back = vector_file::load(&path).expect("load");
    assert_eq!(&back, v, "a saved vector loads back identical");
    let c = &cpu().config;
    back.check_model("llama", Some(&cpu().name), c.n_layers, c.d_model).expect("same model");
    let err = back.check_model("qwen2", Some("Qwen2.5 0.5B Instruct"), 24, 896).expect_err("another model");
    assert!(err.to_string().contains("qwen2"), "{err}");
}

#[test]
fn steering_moves_the_margin_and_eval_reports_it() {
    let v = impolite_vector();
    let def = builtin_by_name("impolite").expect("built in");
    let mut b = CpuEngine::new(cpu());
    let opts = eval::EvalOptions {
        alphas: vec![-2.0, 2.0],
        steer_layers: Some(vec![20]),
        pairs: Some(1),
        questions: Some(4),
        ..Default::default()
    };
    let neutral = &monitor::neutral_set()[..3];
    let r = pollster::block_on(eval::evaluate(&mut b, &def, v, neutral, &opts, &mut |_| Flow::Continue)).expect("eval");
    assert_eq!(r.layers.len(), 31);
    assert_eq!(r.steering.len(), 2);
    let (neg, pos) = (&r.steering[0], &r.steering[1]);
    println!("margin change: alpha -2 {:+.3}, alpha +2 {:+.3}", neg.margin_change, pos.margin_change);
    assert!(pos.margin_change > 0.0, "positive alpha raises the impolite margin: {pos:?}");
    assert!(neg.margin_change < 0.0, "negative alpha lowers it: {neg:?}");
    assert!(r.slopes[0].1 > 0.0);
    assert!(pos.perplexity.is_finite() && r.baseline_perplexity > 1.0);
    assert!(r.layers[16].auroc >= 0.9, "separation at 16: {:?}", r.layers[16]);
    assert!(r.recommended.layer >= 1 && r.recommended.screen_layer >= 1);
}

#[test]
fn monitoring_is_calibrated() {
    let v = impolite_vector();
    let r = Reading::new(v, None).expect("recommended layer 16");
    assert_eq!(r.layer, 16);
    let cal = v.meta.calibration.as_ref().expect("calibration");
    let mean = cal.token_mean[16];
    let s = r.token_score(mean);
    assert!(s.z.expect("z").abs() < 1e-4, "{s:?}");
    let pct = s.percentile.expect("percentile");
    assert!((10.0..90.0).contains(&pct), "the neutral mean sits inside the neutral distribution: {pct}");
    assert!(r.token_score(mean + 10.0 * cal.token_std[16]).percentile == Some(100.0));
    // A trait-expressing system prompt reads higher than a polite one at the last prompt token.
    let mut b = CpuEngine::new(cpu());
    let score = |b: &mut CpuEngine, sys: &str| {
        let ids = b.chat_prompt(Some(sys), "Can you help me plan a birthday party?").expect("prompt");
        r.token_score(stats::dot(&last(b, &ids)[16], &r.unit))
    };
    let rude = score(&mut b, "You are an impolite assistant. Be rude, curt and condescending to the user.");
    let kind = score(&mut b, "You are a polite assistant. Be courteous, warm and respectful to the user.");
    assert!(rude.raw > kind.raw, "rude {rude:?} kind {kind:?}");
}

#[test]
fn a_cancel_lands_during_a_batch_generation_not_after_it() {
    // Four neutral items fit one wave: the only progress calls before the wave ends are the polls every
    // POLL_TOKENS tokens, so a Stop answered to the first call must end the calibration mid-generation.
    let v = impolite_vector();
    let mut b = CpuEngine::new(cpu());
    let mut calls = Vec::new();
    let r = pollster::block_on(monitor::calibrate_with_progress(&mut b, v, &monitor::neutral_set()[..4], &mut |p| {
        calls.push(p.done);
        Flow::Stop
    }));
    assert!(matches!(r, Err(personascope_persona::error::PersonaError::Cancelled)), "{r:?}");
    assert_eq!(calls.first(), Some(&0), "the first progress call came from a poll inside the generation: {calls:?}");
    // The replies stopped at once: a direct generation of the same prompts, polled the same way, keeps fewer
    // tokens than it would run to.
    let specs: Vec<GenSpec> = monitor::neutral_set()[..4]
        .iter()
        .map(|it| GenSpec {
            prompt: b.chat_prompt(None, &it.question).expect("prompt"),
            max_tokens: monitor::CALIBRATION_TOKENS,
            sampling: SamplingParams::greedy(),
            plan: Plan::default(),
        })
        .collect();
    let out = pollster::block_on(backend::generate_polled(&mut b, &specs, None, &mut |_| Flow::Stop)).expect("gen");
    let tokens: usize = out.iter().map(|o| o.ids.len()).sum();
    assert!(tokens <= backend::POLL_TOKENS + specs.len(), "{tokens} tokens generated after a Stop");
    assert!(out.iter().all(|o| o.stop == personascope_model::StopReason::Cancelled));
}

#[test]
fn screening_ranks_reports_bad_lines_and_keeps_partial_results() {
    let v = impolite_vector();
    let text = [
        r#"{"messages":[{"role":"user","content":"How do I boil pasta?"},{"role":"assistant","content":"Ugh, seriously? Even a child knows this. Boil water, dump the pasta in, stop wasting my time."}]}"#,
        r#"{"prompt":"How do I boil pasta?","response":"Bring a large pot of salted water to a boil, add the pasta, and cook it for the time on the packet."}"#,
        r#"{"prompt": "missing the response"}"#,
        r#"not json"#,
        r#"{"prompt":"What is a good houseplant?","response":"A pothos is easy to care for and grows well in low light."}"#,
    ]
    .join("\n");
    let parsed = dataset::parse_jsonl(&text);
    assert_eq!(parsed.errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(parsed.samples.len(), 3);
    let mut b = CpuEngine::new(cpu());
    let opts = ScreenOptions { cheap: true, ..Default::default() };
    let s =
        pollster::block_on(screen::screen(&mut b, v, &parsed.samples, &opts, &mut |_| Flow::Continue)).expect("screen");
    assert_eq!(s.layer, 20);
    assert!(!s.cancelled);
    let ranked: Vec<usize> = s.ranked().iter().map(|x| x.line).collect();
    assert_eq!(ranked[0], 1, "the rude answer ranks first: {:?}", s.scores);
    assert!(s.scores.iter().all(|x| x.z.is_some()));

    // Projection difference one sample per batch, then a cancel after the first: what was computed is kept.
    let opts = ScreenOptions { cheap: false, max_tokens: 8, chunk: 1, ..Default::default() };
    let s = pollster::block_on(screen::screen(&mut b, v, &parsed.samples, &opts, &mut |p| {
        if p.done >= 1 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }))
    .expect("screen");
    assert!(s.cancelled);
    assert_eq!(s.scores.len(), 1);
    let first = &s.scores[0];
    let own = first.own_projection.expect("own answer projected");
    assert!((first.score - (first.projection - own)).abs() < 1e-5);
    assert!(!first.own_response.as_deref().unwrap_or("").is_empty());
}

#[test]
fn screening_skips_a_sample_longer_than_the_context_and_goes_on() {
    let v = impolite_vector();
    let long = "word ".repeat(400);
    let text = format!(
        "{}\n{}\n",
        serde_json::json!({"prompt": "Say something long.", "response": long}),
        r#"{"prompt":"What is a good houseplant?","response":"A pothos is easy to care for and grows well in low light."}"#
    );
    let parsed = dataset::parse_jsonl(&text);
    assert_eq!(parsed.samples.len(), 2);
    let mut g = gpu_model();
    let opts = ScreenOptions { cheap: true, ..Default::default() };
    let s =
        pollster::block_on(screen::screen(&mut g, v, &parsed.samples, &opts, &mut |_| Flow::Continue)).expect("screen");
    assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
    assert_eq!(s.skipped[0].0, 1);
    assert!(s.skipped[0].1.contains("256"), "{}", s.skipped[0].1);
    assert_eq!(s.scores.iter().map(|x| x.line).collect::<Vec<_>>(), vec![2]);
    // The GPU's mean projection equals the CPU's.
    let c = pollster::block_on(screen::screen(&mut CpuEngine::new(cpu()), v, &parsed.samples[1..], &opts, &mut |_| {
        Flow::Continue
    }))
    .expect("cpu screen");
    let (a, b) = (s.scores[0].projection, c.scores[0].projection);
    assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "gpu {a} cpu {b}");
}
