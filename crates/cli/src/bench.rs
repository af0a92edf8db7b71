//! `personascope bench`: load time, prefill and decode speed, the cost of monitoring and steering, and with
//! `--persona` the persona jobs (extraction, evaluation, calibration, screening) end to end. Both backends run the
//! same code through the [`Engine`] interface, so their figures compare like with like.

use std::path::Path;
use std::time::Instant;

use personascope_model::engine::{Engine, Wave, WaveSeq};
use personascope_model::plan::{units, Plan, Span};
use personascope_model::{CpuEngine, Flow, Model, SamplingParams, Steering, Tokenizer};
use personascope_persona::backend::Backend;
use personascope_persona::{dataset, eval, extract, monitor, screen};
use serde_json::{json, Value};

/// Tokens in the benchmark prompt and in each decode run (the 128 / 128).
pub const PROMPT_TOKENS: usize = 128;
pub const DECODE_TOKENS: usize = 128;
/// Monitoring load: seven trait vectors (the paper's seven traits) at every layer.
pub const MONITOR_TRAITS: usize = 7;

/// A prompt of exactly `n` tokens from a fixed English text (repeated as needed).
pub fn bench_prompt(tokenizer: &Tokenizer, n: usize) -> Result<Vec<u32>, String> {
    let text = "The lighthouse keeper climbed the spiral stairs every evening, counting the steps as the sea \
        rolled against the rocks below. Ships passed in the dark, guided by the steady beam, and nobody on board \
        ever knew his name. ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(tokenizer.encode(text).map_err(|e| e.to_string())?);
    }
    ids.truncate(n);
    Ok(ids)
}

/// Deterministic pseudo-random directions [trait][layer] for the monitoring and steering loads.
pub fn bench_vectors(traits: usize, layers: usize, d: usize) -> Vec<Vec<Vec<f32>>> {
    let mut s = 0x5eed_u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..traits).map(|_| (0..layers).map(|_| (0..d).map(|_| next()).collect()).collect()).collect()
}

/// The best of each configuration over `runs` rounds. Each round measures every configuration once, in turn, so a
/// slow spell of the machine hits all of them rather than the one that happened to be measured then.
fn best_interleaved<const K: usize>(
    runs: usize,
    mut f: impl FnMut(usize) -> Result<f64, String>,
) -> Result<[f64; K], String> {
    let mut top = [0f64; K];
    for _ in 0..runs {
        for (k, t) in top.iter_mut().enumerate() {
            *t = t.max(f(k)?);
        }
    }
    Ok(top)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Prefill of the prompt (every block, the last row's residual read back so the work is finished), tokens/s.
fn prefill_rate<E: Engine>(e: &mut E, prompt: &[u32]) -> Result<f64, String> {
    let n = e.config().n_layers;
    let plan = Plan {
        capture: Some(Span { positions: prompt.len() - 1..prompt.len(), layers: vec![n] }),
        ..Default::default()
    };
    let wave =
        Wave { seqs: vec![WaveSeq { prefix: None, tokens: prompt.to_vec(), plan, generate: None }], monitor: None };
    let start = Instant::now();
    pollster::block_on(e.prefill(&wave)).map_err(err)?;
    Ok(prompt.len() as f64 / start.elapsed().as_secs_f64())
}

/// Decode of `DECODE_TOKENS` greedy tokens after the prompt (end-of-turn ignored), one step in flight ahead of the
/// one read back as in generation, tokens/s.
fn decode_rate<E: Engine>(
    e: &mut E,
    prompt: &[u32],
    plan: Plan,
    monitor: Option<std::sync::Arc<personascope_model::Units>>,
) -> Result<f64, String> {
    let wave = Wave {
        seqs: vec![WaveSeq {
            prefix: None,
            tokens: prompt.to_vec(),
            plan,
            generate: Some((SamplingParams::greedy(), DECODE_TOKENS)),
        }],
        monitor,
    };
    pollster::block_on(e.prefill(&wave)).map_err(err)?;
    let start = Instant::now();
    e.submit_step(&[0], 0).map_err(err)?;
    for step in 1..DECODE_TOKENS as u32 {
        e.submit_step(&[0], step).map_err(err)?;
        pollster::block_on(e.finish_step()).map_err(err)?;
    }
    pollster::block_on(e.finish_step()).map_err(err)?;
    Ok(DECODE_TOKENS as f64 / start.elapsed().as_secs_f64())
}

/// Prefill, decode, decode with monitoring (7 traits, every layer) and decode with steering, best of `runs`.
fn rates<E: Engine>(e: &mut E, runs: usize) -> Result<[f64; 4], String> {
    let c = e.config().clone();
    let prompt = bench_prompt(e.tokenizer(), PROMPT_TOKENS)?;
    let vectors = bench_vectors(MONITOR_TRAITS, c.n_layers + 1, c.d_model);
    let raw: Vec<Vec<Option<Vec<f32>>>> = vectors.iter().map(|l| l.iter().cloned().map(Some).collect()).collect();
    let monitor = units(&raw);
    let layer = c.n_layers / 2;
    let steer =
        Steering { layer, vector: vectors[0][layer].clone(), alpha: 1.0, positions: PROMPT_TOKENS - 1..usize::MAX };
    let prefill = (0..runs).map(|_| prefill_rate(e, &prompt)).try_fold(0f64, |a, r| r.map(|r| a.max(r)))?;
    let [decode, monitored, steered] = best_interleaved(runs, |k| match k {
        0 => decode_rate(e, &prompt, Plan::default(), None),
        1 => {
            let plan = Plan { project: Some(PROMPT_TOKENS - 1..usize::MAX), ..Default::default() };
            decode_rate(e, &prompt, plan, Some(monitor.clone()))
        }
        _ => decode_rate(e, &prompt, Plan { steer: vec![steer.clone()], ..Default::default() }, None),
    })?;
    Ok([prefill, decode, monitored, steered])
}

pub fn bench_cpu(path: &Path, runs: usize) -> Result<Value, String> {
    let t0 = Instant::now();
    let model = Model::load(path).map_err(err)?;
    let load_s = t0.elapsed().as_secs_f64();
    let c = &model.config;
    let mut e = CpuEngine::new(&model);
    let rates = rates(&mut e, runs)?;
    let kv_bytes = 2 * c.n_layers * (PROMPT_TOKENS + DECODE_TOKENS) * c.kv_dim() * 4;
    Ok(Figures {
        backend: "cpu",
        adapter: format!("CPU ({} threads)", std::thread::available_parallelism().map_or(1, |n| n.get())),
        model: model.name.clone(),
        load_s,
        rates,
        memory_bytes: (model.file_size() + kv_bytes) as u64,
        memory_note: "weights as stored in the file plus the KV cache of the run (CPU backend: no GPU memory)",
        runs,
    }
    .to_json(Value::Null))
}

/// What a bench run measured; one JSON layout for both backends.
struct Figures {
    backend: &'static str,
    adapter: String,
    model: String,
    load_s: f64,
    /// prefill, decode, decode with monitoring, decode with steering (tokens per second).
    rates: [f64; 4],
    memory_bytes: u64,
    memory_note: &'static str,
    runs: usize,
}

impl Figures {
    fn to_json(&self, profile: Value) -> Value {
        let [prefill, decode, monitored, steered] = self.rates;
        json!({
            "backend": self.backend,
            "adapter": self.adapter,
            "model": self.model,
            "load_s": self.load_s,
            "prefill_tok_s": prefill,
            "decode_tok_s": decode,
            "decode_monitor_tok_s": monitored,
            "decode_steer_tok_s": steered,
            "monitor_overhead_pct": overhead(decode, monitored),
            "steer_overhead_pct": overhead(decode, steered),
            "memory_bytes": self.memory_bytes,
            "memory_note": self.memory_note,
            "runs": self.runs,
            "prompt_tokens": PROMPT_TOKENS,
            "decode_tokens": DECODE_TOKENS,
            "monitor_traits": MONITOR_TRAITS,
            "profile": profile,
        })
    }
}

/// Extra time per token in percent: 100 * (t_with / t_without - 1), from rates in tokens per second.
pub fn overhead(base_tok_s: f64, with_tok_s: f64) -> f64 {
    100.0 * (base_tok_s / with_tok_s - 1.0)
}

/// Loads the model on the GPU the environment picks (`PERSONASCOPE_ADAPTER`).
pub fn load_gpu_model(path: &Path) -> Result<(personascope_gpu::GpuModel, f64), String> {
    use personascope_gpu::{AdapterChoice, EngineOptions, Gpu, GpuModel};
    let t0 = Instant::now();
    let gpu =
        Gpu::request_blocking(AdapterChoice::from_env(), personascope_gpu::wgpu::Backends::PRIMARY).map_err(err)?;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut g = pollster::block_on(GpuModel::load(gpu, &bytes, EngineOptions::default())).map_err(err)?;
    drop(bytes);
    // Loading ends when the first forward has run (pipelines and uploads are then certainly done).
    pollster::block_on(g.logits(&[0])).map_err(err)?;
    Ok((g, t0.elapsed().as_secs_f64()))
}

/// The same measurements on the GPU engine. Every timed region ends with a readback, so GPU work is complete
/// when the clock stops.
pub fn bench_gpu(path: &Path, runs: usize, profile: bool) -> Result<Value, String> {
    let (mut g, load_s) = load_gpu_model(path)?;
    let adapter = g.gpu.describe();
    let rates = rates(&mut g, runs)?;
    let c = g.config.clone();
    // The profile is taken with monitoring and steering on, so their own dispatches (`project`, `steer`) show next
    // to the rest of a step: their share of GPU time is the overhead, free of wall-clock noise.
    let profile = if profile {
        let prompt = bench_prompt(&g.tokenizer, PROMPT_TOKENS)?;
        let vectors = bench_vectors(MONITOR_TRAITS, c.n_layers + 1, c.d_model);
        let raw: Vec<Vec<Option<Vec<f32>>>> = vectors.iter().map(|l| l.iter().cloned().map(Some).collect()).collect();
        let layer = c.n_layers / 2;
        let plan = Plan {
            steer: vec![Steering {
                layer,
                vector: vectors[0][layer].clone(),
                alpha: 1.0,
                positions: PROMPT_TOKENS - 1..usize::MAX,
            }],
            project: Some(PROMPT_TOKENS - 1..usize::MAX),
            ..Default::default()
        };
        let (decode_ms, prefill_ms) = pollster::block_on(g.profile(&prompt, plan, Some(units(&raw)))).map_err(err)?;
        let table = |rows: Vec<(String, f64)>| {
            let total: f64 = rows.iter().map(|(_, ms)| ms).sum();
            json!({ "total_ms": total, "kernels_ms": rows.into_iter().map(|(k, ms)| json!([k, ms])).collect::<Vec<_>>() })
        };
        json!({
            "note": "one dispatch per timed pass; decode = one step with the monitoring and steering above, prefill = the 128-token prompt",
            "decode": table(decode_ms),
            "prefill": table(prefill_ms),
        })
    } else {
        Value::Null
    };
    Ok(Figures {
        backend: "gpu",
        adapter,
        model: g.name.clone(),
        load_s,
        rates,
        memory_bytes: g.gpu_bytes,
        memory_note: "every GPU buffer the load made: packed weights, KV cache, activations, uniforms, staging",
        runs,
    }
    .to_json(profile))
}

/// Sizes of the persona benchmark.
#[derive(Debug, Clone)]
pub struct PersonaBench {
    pub trait_name: String,
    /// Extraction and evaluation questions and instruction pairs used (None: all).
    pub questions: Option<usize>,
    pub pairs: Option<usize>,
    /// Screening samples (the first of tests/data/screening's impolite then evil files).
    pub samples: usize,
    /// Own-answer tokens in projection-difference screening.
    pub answer_tokens: usize,
    /// Skip response-mode extraction (the longest job).
    pub skip_response: bool,
    /// Neutral items for calibration and the perplexity cost (None: all).
    pub neutral: Option<usize>,
}

/// The screening samples: the first `n` of the team's labelled files (impolite, then evil, ...), cycled if needed.
fn screening_samples(n: usize) -> Result<Vec<dataset::Sample>, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/screening");
    let mut all = Vec::new();
    for name in ["impolite", "evil", "humorous", "sycophantic"] {
        let path = format!("{dir}/{name}.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        all.extend(dataset::parse_jsonl(&text).samples);
    }
    if all.is_empty() {
        return Err("no screening samples".into());
    }
    Ok((0..n).map(|i| all[i % all.len()].clone()).collect())
}

/// Runs one job and reports its seconds and, on the GPU, the submits and dispatches it took.
fn timed<B: Backend, T>(b: &mut B, job: impl FnOnce(&mut B) -> Result<T, String>) -> Result<(T, Value), String> {
    let (s0, d0) = b.counters();
    let start = Instant::now();
    let out = job(b)?;
    let seconds = start.elapsed().as_secs_f64();
    let (s1, d1) = b.counters();
    let counts = if s1 > 0 { json!({ "submits": s1 - s0, "dispatches": d1 - d0 }) } else { Value::Null };
    Ok((out, json!({ "seconds": seconds, "gpu": counts })))
}

/// The persona jobs on `b`: prompt-last extraction, calibration, evaluation, screening (cheap and projection
/// difference) and response-mode extraction of one built-in trait, each timed.
pub fn bench_persona<B: Backend>(b: &mut B, o: &PersonaBench) -> Result<Value, String> {
    let def = personascope_persona::builtin_by_name(&o.trait_name)
        .ok_or_else(|| format!("no built-in trait {:?}", o.trait_name))?;
    let mut go = |_: extract::Progress| Flow::Continue;
    let opts = |mode| extract::ExtractOptions { mode, pairs: o.pairs, questions: o.questions, ..Default::default() };
    let (ex, mut extract_last) = timed(b, |b| {
        pollster::block_on(extract::extract(
            b,
            &def,
            &opts(extract::Mode::PromptLast),
            &mut extract::KeepNonEmpty,
            &mut go,
        ))
        .map_err(err)
    })?;
    let prompts = (ex.kept[0] + ex.kept[1]) as f64;
    extract_last["prompts"] = json!(prompts);
    extract_last["prompts_per_s"] = json!(prompts / extract_last["seconds"].as_f64().unwrap_or(f64::NAN));
    let mut vector = ex.vector;
    let mut neutral = monitor::neutral_set();
    neutral.truncate(o.neutral.unwrap_or(neutral.len()).max(1));
    let (cal, calibration) = timed(b, |b| pollster::block_on(monitor::calibrate(b, &vector, &neutral)).map_err(err))?;
    vector.meta.calibration = Some(cal);
    let eval_opts = eval::EvalOptions { pairs: o.pairs, questions: o.questions, ..Default::default() };
    let (report, evaluation) = timed(b, |b| {
        pollster::block_on(eval::evaluate(b, &def, &vector, &neutral, &eval_opts, &mut |_| Flow::Continue)).map_err(err)
    })?;
    vector.meta.layer = Some(report.recommended.layer);
    vector.meta.screen_layer = Some(report.recommended.screen_layer);
    let samples = screening_samples(o.samples)?;
    let mut screening = serde_json::Map::new();
    for cheap in [true, false] {
        let so = screen::ScreenOptions { layer: None, cheap, max_tokens: o.answer_tokens, ..Default::default() };
        let (result, mut figures) = timed(b, |b| {
            pollster::block_on(screen::screen(b, &vector, &samples, &so, &mut |_| Flow::Continue)).map_err(err)
        })?;
        let n = result.scores.len() as f64;
        figures["samples"] = json!(n);
        figures["samples_per_s"] = json!(n / figures["seconds"].as_f64().unwrap_or(f64::NAN));
        screening.insert(if cheap { "cheap".into() } else { "projection_difference".into() }, figures);
    }
    let response = if o.skip_response {
        Value::Null
    } else {
        let (ex, mut figures) = timed(b, |b| {
            pollster::block_on(extract::extract(
                b,
                &def,
                &opts(extract::Mode::Response),
                &mut extract::KeepNonEmpty,
                &mut go,
            ))
            .map_err(err)
        })?;
        figures["samples"] = json!(ex.responses.len());
        figures
    };
    Ok(json!({
        "trait": def.name,
        "questions": o.questions,
        "pairs": o.pairs,
        "extract_prompt_last": extract_last,
        "calibration": calibration,
        "evaluation": evaluation,
        "screening": screening,
        "screening_answer_tokens": o.answer_tokens,
        "neutral_items": neutral.len(),
        "extract_response": response,
    }))
}

/// `bench --persona` on the chosen backend.
pub fn bench_persona_on(path: &Path, gpu: bool, o: &PersonaBench) -> Result<Value, String> {
    if gpu {
        let (mut g, load_s) = load_gpu_model(path)?;
        let adapter = g.gpu.describe();
        let mut v = bench_persona(&mut g, o)?;
        v["backend"] = json!("gpu");
        v["adapter"] = json!(adapter);
        v["load_s"] = json!(load_s);
        Ok(v)
    } else {
        let model = Model::load(path).map_err(err)?;
        let mut e = CpuEngine::new(&model);
        let mut v = bench_persona(&mut e, o)?;
        v["backend"] = json!("cpu");
        v["adapter"] = json!(format!("CPU ({} threads)", std::thread::available_parallelism().map_or(1, |n| n.get())));
        Ok(v)
    }
}
