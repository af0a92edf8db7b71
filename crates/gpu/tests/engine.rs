//! The whole model on the GPU (lavapipe) against the CPU reference, on the real SmolLM2-135M-Instruct and the
//! tiny qwen2 / llama3 goldens: logits, residuals and greedy tokens; every kind of plan output over a wave of mixed
//! passes with shared prefixes (batched against one at a time on the CPU); steered, monitored and batched
//! generation; stop reasons.

#![allow(clippy::needless_range_loop)] // parallel indexing of GPU and CPU tables reads clearer

mod common;

use common::gpu;
use personascope_gpu::{EngineOptions, GpuModel};
use personascope_model::engine::Engine;
use personascope_model::plan::{units, Plan, Span};
use personascope_model::schedule::{generate_many, run_passes, GenOut, GenSpec};
use personascope_model::{
    argmax, CpuEngine, Flow, Logits, Message, Model, NoHook, SamplingParams, Steering, StopReason,
};
use personascope_tests::plans::{mixed_monitor, mixed_passes, same_out, vector, Tolerance};
use personascope_tests::{default_model, golden_path, rel_l2};

/// Last-position logits: ||gpu - cpu|| / ||cpu|| (the 1e-3 relative).
const LOGITS_REL: f64 = 1e-3;
/// Residual stream at every index: relative L2 error.
const RESIDUAL_REL: f64 = 1e-4;
/// Greedy tokens must agree until the CPU's top-2 margin falls below this.
const NEAR_TIE: f32 = 1e-2;
/// GPU results against the CPU reference: f32 sums in another order, the LM head's log-softmax in f32.
const GPU_TOL: Tolerance = Tolerance { rows: RESIDUAL_REL, scores: 1e-3, logprobs: 2e-3 };

fn load_with(path: &std::path::Path, opts: EngineOptions) -> GpuModel {
    let bytes = std::fs::read(path).expect("read model");
    pollster::block_on(GpuModel::load(gpu().clone(), &bytes, opts)).expect("load on GPU")
}

fn load_gpu(path: &std::path::Path) -> GpuModel {
    load_with(path, EngineOptions { max_positions: 512, batch: 16, max_traits: 8, head_rows: 8, out_floats: 1 << 20 })
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

fn greedy(g: &mut GpuModel, ids: &[u32], max: usize) -> GenOut {
    pollster::block_on(g.generate(ids, max, &SamplingParams::greedy(), &mut |_, _| Flow::Continue)).expect("generate")
}

fn check_model(path: &std::path::Path, ids: Option<Vec<u32>>, greedy_steps: usize) {
    let cpu = Model::load(path).expect("load on CPU");
    let mut g = load_gpu(path);
    let ids = ids.unwrap_or_else(|| prompt(&cpu));
    let n = cpu.config.n_layers;
    let last = ids.len() - 1;
    let plan = Plan { capture: Some(Span::all_layers(last..last + 1, n)), ..Default::default() };
    let want_rows = cpu.run_plan(&ids, &plan, None).expect("cpu plan");
    let mut cache = cpu.new_cache();
    let want = cpu.forward(&mut cache, &ids, &mut NoHook, Logits::Last).expect("cpu forward");

    let got = pollster::block_on(g.logits(&ids)).expect("gpu logits");
    let err = rel_l2(&got, &want);
    println!("{}: logits rel err {err:.2e}", path.display());
    assert!(err < LOGITS_REL, "logits rel err {err:.3e}");
    let residuals = pollster::block_on(g.residuals(&ids)).expect("gpu residuals");
    for l in 0..=n {
        let e = rel_l2(&residuals[l], &want_rows.captured[0].1[l]);
        assert!(e < RESIDUAL_REL, "residual index {l}: rel err {e:.3e}");
    }

    // Greedy: the GPU samples on the GPU; the CPU follows the same tokens and checks they are its argmax.
    let out = greedy(&mut g, &ids, greedy_steps);
    let mut cpu_logits = want;
    for (step, &tok) in out.ids.iter().enumerate() {
        if margin(&cpu_logits) < NEAR_TIE {
            println!("step {step}: CPU near-tie, stop comparing");
            break;
        }
        assert_eq!(tok, argmax(&cpu_logits) as u32, "greedy step {step}");
        cpu_logits = cpu.forward(&mut cache, &[tok], &mut NoHook, Logits::Last).expect("cpu step");
    }
}

#[test]
fn smollm2_matches_cpu() {
    check_model(&default_model(), None, 12);
}

#[test]
fn qwen2_tiny_matches_cpu() {
    let path = golden_path("qwen2_tiny.gguf");
    let cpu = Model::load(&path).expect("cpu");
    let ids = cpu.tokenizer.encode("The quick brown fox jumps over the lazy dog.").expect("ids");
    check_model(&path, Some(ids), 8);
}

#[test]
fn llama3_tiny_matches_cpu() {
    let path = golden_path("llama3_tiny.gguf");
    let cpu = Model::load(&path).expect("cpu");
    let ids = cpu.tokenizer.encode("Once upon a time in a small village").expect("ids");
    check_model(&path, Some(ids), 8);
}

#[test]
fn batched_passes_match_the_cpu_one_at_a_time() {
    // Every plan output (captures, means with early exit, projections, log-probabilities, steering) over passes
    // that share system prompts, in calls small enough that sequences and prefixes straddle them.
    let path = default_model();
    let cpu = Model::load(&path).expect("cpu");
    let specs = mixed_passes(&cpu);
    let mon = mixed_monitor(&cpu);
    let want: Vec<_> = specs.iter().map(|p| cpu.run_plan(&p.tokens, &p.plan, Some(&mon)).expect("reference")).collect();
    for batch in [64, 7] {
        let mut g = load_with(
            &path,
            EngineOptions { max_positions: 512, batch, max_traits: 4, head_rows: 5, out_floats: 1 << 20 },
        );
        let got = pollster::block_on(run_passes(&mut g, &specs, Some(mon.clone()), &mut |_| Flow::Continue))
            .expect("gpu passes");
        for (i, (gout, w)) in got.outs.iter().zip(&want).enumerate() {
            same_out(&format!("pass {i} (batch {batch})"), gout.as_ref().expect("ran"), w, &GPU_TOL);
        }
        let (submits, dispatches) = g.counters();
        println!("batch {batch}: {} passes in {submits} submits, {dispatches} dispatches", specs.len());
    }
}

#[test]
fn steered_monitored_generation_matches_cpu() {
    let path = default_model();
    let cpu = Model::load(&path).expect("cpu");
    let (d, n) = (cpu.config.d_model, cpu.config.n_layers);
    let ids = prompt(&cpu);
    let p = ids.len();
    let raw: Vec<Vec<Option<Vec<f32>>>> =
        (0..3).map(|t| (0..=n).map(|l| Some(vector(d, (t * 31 + l) as u32))).collect()).collect();
    let mon = units(&raw);
    let plan = Plan {
        steer: vec![Steering { layer: 15, vector: vector(d, 99), alpha: 2.0, positions: p - 1..usize::MAX }],
        project: Some(p - 1..usize::MAX),
        ..Default::default()
    };
    let spec = GenSpec { prompt: ids.clone(), max_tokens: 6, sampling: SamplingParams::greedy(), plan };
    let mut cpu_engine = CpuEngine::new(&cpu);
    let want = pollster::block_on(generate_many(
        &mut cpu_engine,
        std::slice::from_ref(&spec),
        Some(mon.clone()),
        &mut |_| Flow::Continue,
        &mut |_| Flow::Continue,
    ))
    .expect("cpu")
    .remove(0);
    let mut g = load_gpu(&path);
    let got =
        pollster::block_on(generate_many(&mut g, &[spec], Some(mon.clone()), &mut |_| Flow::Continue, &mut |_| {
            Flow::Continue
        }))
        .expect("gpu")
        .remove(0);
    assert_eq!(got.ids, want.ids, "steered greedy tokens");
    let close = |what: &str, a: &[Vec<f32>], b: &[Vec<f32>]| {
        for t in 0..3 {
            for l in 0..=n {
                let (x, y) = (a[t][l], b[t][l]);
                assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{what} t{t} l{l}: gpu {x} cpu {y}");
            }
        }
    };
    close("pre-generation score", &got.prompt_scores, &want.prompt_scores);
    assert_eq!(got.scores.len(), want.scores.len());
    for (k, (a, b)) in got.scores.iter().zip(&want.scores).enumerate() {
        close(&format!("token {k}"), a, b);
    }
    // Steering really acts: without it the first scores differ.
    let plain = Plan { project: Some(p - 1..usize::MAX), ..Default::default() };
    let spec = GenSpec { prompt: ids, max_tokens: 1, sampling: SamplingParams::greedy(), plan: plain };
    let unsteered =
        pollster::block_on(generate_many(&mut g, &[spec], Some(mon), &mut |_| Flow::Continue, &mut |_| Flow::Continue))
            .expect("unsteered")
            .remove(0);
    assert!((unsteered.prompt_scores[0][20] - got.prompt_scores[0][20]).abs() > 1e-3, "steering changed nothing");
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    // Sequences of different lengths decode together and stop on their own; sampled ones use the GPU's
    // counter-based random stream, so each reply is the same alone or batched.
    for path in [default_model(), golden_path("qwen2_tiny.gguf")] {
        let cpu = Model::load(&path).expect("cpu");
        let mut g = load_gpu(&path);
        let sampled = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, repetition_penalty: 1.1, seed: 3 };
        let specs: Vec<GenSpec> = ["Name a fruit.", "What is 2 + 2?", "Say hello in French.", "Count to three."]
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let msgs = [Message { role: "user".into(), content: q.to_string() }];
                GenSpec {
                    prompt: cpu.template.encode_prompt(&cpu.tokenizer, &msgs).expect("prompt"),
                    max_tokens: 4 + 3 * i,
                    sampling: if i % 2 == 0 {
                        SamplingParams::greedy()
                    } else {
                        SamplingParams { seed: i as u64, ..sampled.clone() }
                    },
                    plan: Plan::default(),
                }
            })
            .collect();
        let together =
            pollster::block_on(generate_many(&mut g, &specs, None, &mut |_| Flow::Continue, &mut |_| Flow::Continue))
                .expect("batched");
        for (i, s) in specs.iter().enumerate() {
            let alone = pollster::block_on(generate_many(
                &mut g,
                std::slice::from_ref(s),
                None,
                &mut |_| Flow::Continue,
                &mut |_| Flow::Continue,
            ))
            .expect("alone")
            .remove(0);
            assert_eq!(together[i].ids, alone.ids, "{}: reply {i}", path.display());
            assert_eq!(together[i].stop, alone.stop);
            assert!(alone.ids.len() <= s.max_tokens);
        }
        // Greedy replies are the CPU's too.
        let mut e = CpuEngine::new(&cpu);
        let cpu_out =
            pollster::block_on(generate_many(&mut e, &specs, None, &mut |_| Flow::Continue, &mut |_| Flow::Continue))
                .expect("cpu");
        for i in [0, 2] {
            assert_eq!(together[i].ids, cpu_out[i].ids, "{}: greedy reply {i} vs CPU", path.display());
        }
    }
}

#[test]
fn stop_reasons_and_cancel() {
    let path = default_model();
    let cpu = Model::load(&path).expect("cpu");
    let mut g = load_gpu(&path);
    let ids = prompt(&cpu);
    let full = greedy(&mut g, &ids, 40);
    assert_eq!(full.stop, StopReason::EndOfTurn, "SmolLM2 ends its answer: {:?}", full.text);
    let short = greedy(&mut g, &ids, 3);
    assert_eq!((short.ids.as_slice(), short.stop), (&full.ids[..3], StopReason::MaxTokens));
    let mut seen = 0;
    let cut = pollster::block_on(g.generate(&ids, 40, &SamplingParams::greedy(), &mut |_, _| {
        seen += 1;
        if seen == 2 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }))
    .expect("cancelled generate");
    assert_eq!(cut.ids, full.ids[..2], "cancel keeps the tokens so far");
    assert_eq!(cut.stop, StopReason::Cancelled);
    // A failed wave leaves nothing behind: a bad steering vector is refused, and the next reply is plain.
    let bad = Plan {
        steer: vec![Steering { layer: 3, vector: vec![1.0; 7], alpha: 1.0, positions: 0..usize::MAX }],
        ..Default::default()
    };
    let spec = GenSpec { prompt: ids.clone(), max_tokens: 3, sampling: SamplingParams::greedy(), plan: bad };
    assert!(pollster::block_on(generate_many(&mut g, &[spec], None, &mut |_| Flow::Continue, &mut |_| Flow::Continue))
        .is_err());
    assert_eq!(greedy(&mut g, &ids, 3).ids, short.ids);
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
fn a_lost_device_is_reported_once_with_its_reason() {
    let own = personascope_gpu::Gpu::request_blocking(
        personascope_gpu::AdapterChoice::Fallback,
        personascope_gpu::wgpu::Backends::VULKAN,
    )
    .expect("second device");
    assert_eq!(own.lost(), None);
    own.device.destroy();
    let _ = own.device.poll(personascope_gpu::wgpu::PollType::wait_indefinitely());
    assert_eq!(own.lost().as_deref(), Some("Destroyed"));
    let err = own.health().expect_err("the loss must be reported");
    assert!(matches!(err, personascope_gpu::GpuError::DeviceLost(_)), "{err:?}");
    // The message names the loss once (it was doubled: "was lost: the GPU device was lost: ...").
    assert_eq!(err.to_string(), "the GPU device was lost: Destroyed");
}

#[test]
fn the_memory_figure_counts_every_buffer_the_load_made() {
    // A device of its own: wgpu's counters are per device, and other tests load models on the shared one.
    let own = personascope_gpu::Gpu::request_blocking(
        personascope_gpu::AdapterChoice::Fallback,
        personascope_gpu::wgpu::Backends::VULKAN,
    )
    .expect("a lavapipe device");
    // wgpu keeps a few buffers of its own on every device (and one short-lived one until the first submit).
    own.queue.submit([]);
    let _ = own.device.poll(personascope_gpu::wgpu::PollType::wait_indefinitely());
    let before = own.device.get_internal_counters().hal;
    let bytes = std::fs::read(default_model()).expect("read model");
    let opts = EngineOptions { max_positions: 256, batch: 16, max_traits: 4, head_rows: 8, out_floats: 1 << 20 };
    let g = pollster::block_on(GpuModel::load(own.clone(), &bytes, opts)).expect("load on GPU");
    let _ = own.device.poll(personascope_gpu::wgpu::PollType::wait_indefinitely());
    let after = own.device.get_internal_counters().hal;
    let live = (after.buffers.read() - before.buffers.read()) as u64;
    let memory = (after.buffer_memory.read() - before.buffer_memory.read()) as u64;
    println!("{live} buffers alive, {memory} bytes (driver); figure {} buffers, {} bytes", g.gpu_buffers, g.gpu_bytes);
    // Every buffer alive on the device after the load is one the figure counts, and no counted one is gone.
    assert_eq!(live, g.gpu_buffers, "buffers alive on the device vs buffers in the figure");
    // Lavapipe allocates each buffer at exactly the size asked for: the figure is the driver's own.
    assert_eq!(memory, g.gpu_bytes, "driver memory vs the figure");
}
