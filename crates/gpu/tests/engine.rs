//! The whole model on the GPU (lavapipe) against the CPU reference, on the real SmolLM2-135M-Instruct and the
//! tiny qwen2 / llama3 goldens: logits, residuals, greedy tokens, steering and monitoring.

#![allow(clippy::needless_range_loop)] // parallel indexing of GPU and CPU tables reads clearer

mod common;

use common::gpu;
use personascope_gpu::{EngineOptions, GpuModel};
use personascope_model::{
    argmax, Capture, Logits, Message, Model, NoHook, Projection, ResidualHook, SamplingParams, Steer, Steering,
};
use personascope_tests::{default_model, golden_path, rel_l2};

/// Last-position logits: ||gpu - cpu|| / ||cpu|| (the 1e-3 relative).
const LOGITS_REL: f64 = 1e-3;
/// Residual stream at every index: relative L2 error.
const RESIDUAL_REL: f64 = 1e-4;
/// Greedy tokens must agree until the CPU's top-2 margin falls below this.
const NEAR_TIE: f32 = 1e-2;

fn load_gpu(path: &std::path::Path) -> GpuModel {
    let bytes = std::fs::read(path).expect("read model");
    let opts = EngineOptions { max_positions: 512, batch: 16, max_traits: 8 };
    pollster::block_on(GpuModel::load(gpu().clone(), &bytes, opts)).expect("load on GPU")
}

fn prompt(cpu: &Model) -> Vec<u32> {
    let messages = vec![Message { role: "user".into(), content: "What is the capital of France?".into() }];
    cpu.template.encode_prompt(&cpu.tokenizer, &messages).expect("prompt")
}

fn margin(logits: &[f32]) -> f32 {
    let mut v = logits.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v[0] - v[1]
}

fn check_model(path: &std::path::Path, ids: Option<Vec<u32>>, greedy_steps: usize) {
    let cpu = Model::load(path).expect("load on CPU");
    let mut g = load_gpu(path);
    let ids = ids.unwrap_or_else(|| prompt(&cpu));
    let n = cpu.config.n_layers;
    let last = ids.len() - 1;
    let mut capture = Capture::all_layers(n, last..last + 1);
    let mut cache = cpu.new_cache();
    let want = cpu.forward(&mut cache, &ids, &mut capture, Logits::Last).expect("cpu forward");

    pollster::block_on(g.prefill(&ids)).expect("gpu prefill");
    let got = pollster::block_on(g.read_logits()).expect("read logits");
    let err = rel_l2(&got, &want);
    println!("{}: logits rel err {err:.2e}", path.display());
    assert!(err < LOGITS_REL, "logits rel err {err:.3e}");
    let residuals = pollster::block_on(g.read_residuals()).expect("read residuals");
    for l in 0..=n {
        let e = rel_l2(&residuals[l], &capture.rows[l][0].1);
        assert!(e < RESIDUAL_REL, "residual index {l}: rel err {e:.3e}");
    }

    // Greedy: the GPU samples on the GPU; the CPU follows the same tokens and checks they are its argmax.
    let mut cpu_logits = want;
    for step in 0..greedy_steps {
        let out = pollster::block_on(g.step(&SamplingParams::greedy(), step as u32)).expect("gpu step");
        let cpu_tok = argmax(&cpu_logits) as u32;
        if margin(&cpu_logits) < NEAR_TIE {
            println!("step {step}: CPU near-tie, stop comparing");
            break;
        }
        assert_eq!(out.token, cpu_tok, "greedy step {step}");
        cpu_logits = cpu.forward(&mut cache, &[cpu_tok], &mut NoHook, Logits::Last).expect("cpu step");
        let gpu_logits = pollster::block_on(g.read_logits()).expect("logits");
        let e = rel_l2(&gpu_logits, &cpu_logits);
        assert!(e < LOGITS_REL, "step {step}: logits rel err {e:.3e}");
    }
}

#[test]
fn smollm2_matches_cpu() {
    check_model(&default_model(), None, 24);
}

#[test]
fn qwen2_tiny_matches_cpu() {
    let path = golden_path("qwen2_tiny.gguf");
    let cpu = Model::load(&path).expect("cpu");
    let ids =
        cpu.tokenizer.encode("The waves rolled over the ship, and the sailors sang all night long.").expect("ids");
    check_model(&path, Some(ids), 16);
}

#[test]
fn llama3_tiny_matches_cpu() {
    let path = golden_path("llama3_tiny.gguf");
    let cpu = Model::load(&path).expect("cpu");
    let text = "The waves rolled over the ship, and the sailors sang. ".repeat(8);
    let ids = cpu.tokenizer.encode(&text).expect("ids");
    check_model(&path, Some(ids), 16);
}

#[test]
fn steering_and_monitoring_match_cpu() {
    let path = default_model();
    let cpu = Model::load(&path).expect("cpu");
    let mut g = load_gpu(&path);
    let ids = prompt(&cpu);
    let (d, n) = (cpu.config.d_model, cpu.config.n_layers);
    let p = ids.len();
    let v: Vec<f32> = (0..d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
    let steer = Steer(vec![Steering { layer: 15, vector: v.clone(), alpha: 2.0, positions: p - 1..usize::MAX }]);
    let traits: Vec<Vec<Option<Vec<f32>>>> = (0..3)
        .map(|t| {
            (0..=n).map(|l| Some((0..d).map(|i| (((i + t * 13 + l) % 17) as f32 - 8.0) / 8.0).collect())).collect()
        })
        .collect();
    g.set_steering(&steer).expect("steer");
    g.set_monitor(&traits).expect("monitor");

    let mut hook = (steer.clone(), Projection::new(traits.clone(), 0..usize::MAX));
    let mut cache = cpu.new_cache();
    let mut logits = cpu.forward(&mut cache, &ids, &mut hook, Logits::Last).expect("cpu");
    pollster::block_on(g.prefill(&ids)).expect("prefill");
    let e = rel_l2(&pollster::block_on(g.read_logits()).expect("logits"), &logits);
    assert!(e < LOGITS_REL, "steered prefill logits rel err {e:.3e}");
    let pre = pollster::block_on(g.read_scores()).expect("scores");
    let cpu_pre = &hook.1.scores.last().expect("cpu scores").1;
    for t in 0..3 {
        for l in 0..=n {
            let (a, b) = (pre[t][l], cpu_pre[t][l]);
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "pre-generation score t{t} l{l}: gpu {a} cpu {b}");
        }
    }
    for step in 0..6 {
        let out = pollster::block_on(g.step(&SamplingParams::greedy(), step)).expect("step");
        let tok = argmax(&logits) as u32;
        assert_eq!(out.token, tok, "steered greedy step {step}");
        logits = cpu.forward(&mut cache, &[tok], &mut hook, Logits::Last).expect("cpu step");
        let cpu_scores = &hook.1.scores.last().expect("scores").1;
        for t in 0..3 {
            for l in 0..=n {
                let (a, b) = (out.scores[t][l], cpu_scores[t][l]);
                assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "step {step} score t{t} l{l}: gpu {a} cpu {b}");
            }
        }
    }
    // Steering really acts: the unsteered logits differ.
    let mut plain = cpu.new_cache();
    let unsteered = cpu.forward(&mut plain, &ids, &mut NoHook, Logits::Last).expect("plain");
    g.reset();
    g.set_steering(&Steer::default()).expect("off");
    pollster::block_on(g.prefill(&ids)).expect("prefill");
    let e = rel_l2(&pollster::block_on(g.read_logits()).expect("logits"), &unsteered);
    assert!(e < LOGITS_REL, "unsteered after reset: {e:.3e}");
    let _ = &mut hook as &mut dyn ResidualHook;
}

#[test]
fn running_sums_match_cpu_capture() {
    // Response averages without reading every token back: sums over positions P-1.. kept on the GPU.
    let path = golden_path("qwen2_tiny.gguf");
    let cpu = Model::load(&path).expect("cpu");
    let mut g = load_gpu(&path);
    let ids = cpu.tokenizer.encode("A short prompt about the sea and the stars.").expect("ids");
    let n = cpu.config.n_layers;
    let range = ids.len() - 3..usize::MAX;
    g.set_sum_range(Some(range.clone()));
    let mut capture = Capture::all_layers(n, range);
    let mut cache = cpu.new_cache();
    let mut logits = cpu.forward(&mut cache, &ids, &mut capture, Logits::Last).expect("cpu");
    pollster::block_on(g.prefill(&ids)).expect("prefill");
    for step in 0..5 {
        let out = pollster::block_on(g.step(&SamplingParams::greedy(), step)).expect("step");
        let tok = argmax(&logits) as u32;
        assert_eq!(out.token, tok);
        logits = cpu.forward(&mut cache, &[tok], &mut capture, Logits::Last).expect("cpu step");
    }
    let sums = pollster::block_on(g.read_sums()).expect("sums");
    for l in 0..=n {
        let mut want = vec![0f32; cpu.config.d_model];
        for (_, row) in &capture.rows[l] {
            for (w, x) in want.iter_mut().zip(row) {
                *w += x;
            }
        }
        assert_eq!(capture.rows[l].len(), 3 + 5, "captured tokens");
        let e = rel_l2(&sums[l], &want);
        assert!(e < RESIDUAL_REL, "sum at residual index {l}: rel err {e:.3e}");
    }
}

#[test]
fn device_errors_are_reported_not_panics() {
    // A bad command (a copy past the end of a buffer) must surface through `health()`, not wgpu's panicking
    // default handler.
    let g = gpu().clone();
    let own = personascope_gpu::Gpu::request_blocking(
        personascope_gpu::AdapterChoice::Fallback,
        personascope_gpu::wgpu::Backends::VULKAN,
    )
    .expect("second device");
    assert!(g.health().is_ok());
    let a = personascope_gpu::kernel::storage_zeroed(&own, "a", 16);
    let b = personascope_gpu::kernel::storage_zeroed(&own, "b", 16);
    let mut enc = own.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&a, 0, &b, 0, 64);
    own.queue.submit([enc.finish()]);
    let _ = own.device.poll(personascope_gpu::wgpu::PollType::wait_indefinitely());
    let err = own.health().expect_err("the invalid copy must be reported");
    assert!(err.to_string().contains("GPU"), "{err}");
}

#[test]
fn pipelined_generate_equals_step_by_step() {
    // `generate` submits step k+1 before reading step k; the tokens must be those of plain `step` calls, and the
    // stop reasons right.
    for (path, max) in [(default_model(), 12usize), (golden_path("qwen2_tiny.gguf"), 5)] {
        let cpu = Model::load(&path).expect("cpu");
        let mut g = load_gpu(&path);
        let ids = prompt(&cpu);
        let out = pollster::block_on(
            g.generate(&ids, max, &SamplingParams::greedy(), &mut |_, _, _| personascope_model::Flow::Continue),
        )
        .expect("generate");
        g.reset();
        pollster::block_on(g.prefill(&ids)).expect("prefill");
        let mut want = Vec::new();
        let stop_ids = cpu.tokenizer.stop_ids().to_vec();
        for step in 0..max {
            let t = pollster::block_on(g.step(&SamplingParams::greedy(), step as u32)).expect("step").token;
            if stop_ids.contains(&t) {
                break;
            }
            want.push(t);
        }
        assert_eq!(out.ids, want, "{}", path.display());
        let expected_stop = if want.len() < max {
            personascope_model::StopReason::EndOfTurn
        } else {
            personascope_model::StopReason::MaxTokens
        };
        assert_eq!(out.stop, expected_stop, "{}", path.display());
        // Cancelling after two tokens keeps exactly two.
        let mut seen = 0;
        let cut = pollster::block_on(g.generate(&ids, max, &SamplingParams::greedy(), &mut |_, _, _| {
            seen += 1;
            if seen == 2 {
                personascope_model::Flow::Stop
            } else {
                personascope_model::Flow::Continue
            }
        }))
        .expect("cancelled generate");
        assert_eq!(cut.ids, want[..2.min(want.len())], "cancel");
        assert_eq!(cut.stop, personascope_model::StopReason::Cancelled);
    }
}
