//! The persona commands: extract, eval, screen, and the --steer / --monitor options of generate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use personascope_gpu::GpuModel;
use personascope_model::schedule::{GenOut, GenSpec};
use personascope_model::{CpuEngine, Flow, Model, Plan, SamplingParams, Steering};
use personascope_persona::backend::{self, Backend};
use personascope_persona::monitor::{self, Reading};
use personascope_persona::steer::{self, SteerSpec};
use personascope_persona::vector_file::{self, TraitVector};
use personascope_persona::{dataset, eval, extract, files, screen, stats, TraitDefinition};
use serde_json::{json, Value};

use crate::{load_gpu, load_path, print_json, Backend as Which, CliResult, ModelArgs};

/// A model on either backend.
pub enum Loaded {
    Cpu(Box<Model>),
    Gpu(Box<GpuModel>),
}

impl Loaded {
    /// The GPU work a job took since load ({"submits", "dispatches"}), null on the CPU: what `bench --persona`
    /// reports, for any job's `--json` output.
    fn gpu_counts(&self) -> Value {
        match self {
            Loaded::Cpu(_) => Value::Null,
            Loaded::Gpu(g) => {
                let (submits, dispatches) = personascope_model::Engine::counters(&**g);
                json!({ "submits": submits, "dispatches": dispatches })
            }
        }
    }
}

impl Loaded {
    pub fn encode_prompt(&self, messages: &[personascope_model::Message]) -> CliResult<Vec<u32>> {
        let (template, tokenizer) = match self {
            Loaded::Cpu(m) => (&m.template, &m.tokenizer),
            Loaded::Gpu(g) => (&g.template, &*g.tokenizer),
        };
        template.encode_prompt(tokenizer, messages).map_err(err)
    }

    pub fn describe(&self) -> String {
        let (name, c) = match self {
            Loaded::Cpu(m) => (&m.name, &m.config),
            Loaded::Gpu(g) => (&g.name, &g.config),
        };
        format!("{name} ({} blocks, width {})", c.n_layers, c.d_model)
    }
}

pub fn load(args: &ModelArgs) -> CliResult<Loaded> {
    Ok(match args.backend {
        Which::Cpu => Loaded::Cpu(Box::new(load_path(&args.model)?)),
        Which::Gpu => Loaded::Gpu(Box::new(load_gpu(&args.model)?)),
    })
}

/// Runs `$body` with `$b` bound to the backend of `$loaded` (the persona functions are generic over it).
macro_rules! with_backend {
    ($loaded:expr, |$b:ident| $body:expr) => {
        match $loaded {
            Loaded::Cpu(m) => {
                let mut $b = CpuEngine::new(&**m);
                $body
            }
            Loaded::Gpu(g) => {
                let mut $b: &mut GpuModel = &mut **g;
                $body
            }
        }
    };
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A trait given as a built-in name (`evil`) or a path to a definition file.
pub fn load_trait(spec: &str) -> CliResult<TraitDefinition> {
    if let Some(def) = personascope_persona::builtin_by_name(spec) {
        return Ok(def);
    }
    let text = std::fs::read_to_string(spec).map_err(|e| {
        format!(
            "{spec}: {e} (not a file, and not a built-in trait: {})",
            personascope_persona::BUILTIN_NAMES.join(", ")
        )
    })?;
    personascope_persona::parse(&text).map_err(|e| format!("{spec}: {e}"))
}

pub fn load_vector(path: &Path) -> CliResult<TraitVector> {
    vector_file::load(path).map_err(err)
}

/// Ctrl-C asks long runs to stop (keeping what they computed) instead of killing the process.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // If a handler is already installed (a second long run in one process), the first flag keeps working.
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Built-in trait name (evil, sycophantic, hallucinating, optimistic, impolite, apathetic, humorous) or a
    /// trait-definition JSON file.
    #[arg(long = "trait")]
    pub trait_spec: String,
    /// response (the paper's: mean over the model's own answers), prompt-avg, or prompt-last (fast).
    #[arg(long, default_value = "response")]
    pub mode: String,
    /// Output vector file (llama.cpp control-vector GGUF with Personascope metadata).
    #[arg(long)]
    pub out: PathBuf,
    /// Sampled answers per (question, instruction pair, polarity) in response mode.
    #[arg(long, default_value_t = 1)]
    pub rollouts: usize,
    /// Longest answer in response mode.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N instruction pairs.
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Use only the first N extraction questions.
    #[arg(long)]
    pub questions: Option<usize>,
    /// Write the generated answers (response mode) to this JSONL file.
    #[arg(long)]
    pub responses: Option<PathBuf>,
    /// Calibrate on the first N items of the neutral set (default: all; fewer is faster and coarser).
    #[arg(long)]
    pub calibration_items: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_extract(a: ExtractArgs) -> CliResult<()> {
    let def = load_trait(&a.trait_spec)?;
    let outputs: Vec<&Path> = std::iter::once(a.out.as_path()).chain(a.responses.as_deref()).collect();
    files::check_outputs(&outputs, &[])?;
    let mode: extract::Mode = a.mode.parse().map_err(err)?;
    let opts = extract::ExtractOptions {
        mode,
        rollouts: a.rollouts,
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: a.seed,
        },
        pairs: a.pairs,
        questions: a.questions,
    };
    let start = Instant::now();
    let mut loaded = load(&a.model)?;
    let stop = interrupt_flag();
    let mut last_report = Instant::now();
    let mut progress = |p: extract::Progress| {
        if last_report.elapsed().as_secs_f64() > 5.0 || p.done == p.total {
            eprintln!("extract {}: {}/{} samples ({:.0} s)", def.name, p.done, p.total, start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if stop.load(Ordering::SeqCst) {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let (mut ex, calibration) = with_backend!(&mut loaded, |b| {
        let ex = pollster::block_on(extract::extract(&mut b, &def, &opts, &mut extract::KeepNonEmpty, &mut progress))
            .map_err(err)?;
        let mut neutral = monitor::neutral_set();
        neutral.truncate(a.calibration_items.unwrap_or(neutral.len()).max(1));
        let cal = pollster::block_on(monitor::calibrate(&mut b, &ex.vector, &neutral)).map_err(err)?;
        (ex, cal)
    });
    ex.vector.meta.calibration = Some(calibration);
    vector_file::save(&a.out, &ex.vector).map_err(err)?;
    if let Some(path) = &a.responses {
        let lines: String =
            ex.responses.iter().filter_map(|r| serde_json::to_string(r).ok()).map(|l| l + "\n").collect();
        write_file(path, &lines)?;
    }
    let norms: Vec<f32> = ex.vector.rows.iter().map(|r| stats::norm(r)).collect();
    let report = json!({
        "trait": def.name,
        "mode": mode.name(),
        "out": a.out.display().to_string(),
        "kept": ex.kept,
        "dropped_pairs": ex.dropped_pairs,
        "norms": norms,
        "seconds": start.elapsed().as_secs_f64(),
        "gpu": loaded.gpu_counts(),
    });
    if a.json {
        print_json(&report);
    } else {
        println!(
            "{}: {} vector from {}+{} samples written to {} ({:.0} s). Next: personascope eval --vector {} to choose its layer.",
            def.name,
            mode.name(),
            ex.kept[0],
            ex.kept[1],
            a.out.display(),
            start.elapsed().as_secs_f64(),
            a.out.display()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Built-in trait name or trait-definition JSON file (its evaluation questions are used).
    #[arg(long = "trait")]
    pub trait_spec: String,
    #[arg(long)]
    pub vector: PathBuf,
    /// Steering strengths to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, default_values_t = vec![0.5f32, 1.0, 2.0])]
    pub alphas: Vec<f32>,
    /// Layers for the steering sweep (comma-separated); default: the --top-layers best by separation plus the
    /// layers at 0.55 and 0.7 of the depth.
    #[arg(long, value_delimiter = ',', conflicts_with = "all_layers")]
    pub layers: Option<Vec<usize>>,
    /// Sweep steering at every layer 1..=N (slow: one sweep per layer).
    #[arg(long)]
    pub all_layers: bool,
    #[arg(long, default_value_t = 1)]
    pub top_layers: usize,
    /// Use only the first N instruction pairs for separation.
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Use only the first N evaluation questions.
    #[arg(long)]
    pub questions: Option<usize>,
    /// Largest perplexity cost (percent) for the recommended setting.
    #[arg(long, default_value_t = 25.0)]
    pub max_ppl_cost: f32,
    /// Neutral items whose answers measure the perplexity cost (default: all).
    #[arg(long)]
    pub neutral_items: Option<usize>,
    /// Write the recommended layer, alpha and screening layer into the vector file.
    #[arg(long)]
    pub save: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(a: EvalArgs) -> CliResult<()> {
    let def = load_trait(&a.trait_spec)?;
    let mut vector = load_vector(&a.vector)?;
    let opts = eval::EvalOptions {
        alphas: a.alphas.clone(),
        steer_layers: a.layers.clone(),
        top_layers: a.top_layers,
        pairs: a.pairs,
        questions: a.questions,
        max_ppl_cost_pct: a.max_ppl_cost,
        ..Default::default()
    };
    let start = Instant::now();
    let mut loaded = load(&a.model)?;
    let mut opts = opts;
    if a.all_layers {
        let n = match &loaded {
            Loaded::Cpu(m) => m.config.n_layers,
            Loaded::Gpu(g) => g.config.n_layers,
        };
        opts.steer_layers = Some((1..=n).collect());
    }
    let stop = interrupt_flag();
    let mut last_report = Instant::now();
    let mut progress = |p: eval::Progress| {
        if last_report.elapsed().as_secs_f64() > 5.0 || p.done == p.total {
            eprintln!("eval {}: {} {}/{} ({:.0} s)", def.name, p.stage, p.done, p.total, start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if stop.load(Ordering::SeqCst) {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let mut neutral = monitor::neutral_set();
    neutral.truncate(a.neutral_items.unwrap_or(neutral.len()).max(1));
    let report = with_backend!(&mut loaded, |b| pollster::block_on(eval::evaluate(
        &mut b,
        &def,
        &vector,
        &neutral,
        &opts,
        &mut progress
    ))
    .map_err(err)?);
    if a.save {
        vector.meta.layer = Some(report.recommended.layer);
        vector.meta.alpha = report.recommended.alpha;
        vector.meta.screen_layer = Some(report.recommended.screen_layer);
        vector_file::save(&a.vector, &vector).map_err(err)?;
    }
    let best = report.layers.iter().find(|r| r.layer == report.recommended.layer);
    if a.json {
        let mut v = serde_json::to_value(&report).map_err(err)?;
        if let Value::Object(m) = &mut v {
            m.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
            m.insert("saved".into(), json!(a.save));
            m.insert("gpu".into(), loaded.gpu_counts());
        }
        print_json(&v);
        return Ok(());
    }
    println!("layer  norm    AUROC  effect  answer-AUROC  answer-effect");
    for r in &report.layers {
        println!(
            "{:>5}  {:>6.2}  {:>5.2}  {:>6.2}  {:>12.2}  {:>13.2}",
            r.layer, r.norm, r.auroc, r.effect_size, r.response_auroc, r.response_effect_size
        );
    }
    println!(
        "\nbaseline margin {:+.3} nats/token, neutral perplexity {:.2}",
        report.baseline_margin, report.baseline_perplexity
    );
    println!("layer  alpha  margin change  wrong way  perplexity cost");
    for s in &report.steering {
        println!(
            "{:>5}  {:>5.2}  {:>+13.3}  {:>8.0}%  {:>+14.1}%",
            s.layer,
            s.alpha,
            s.margin_change,
            s.wrong_way * 100.0,
            s.ppl_cost_pct
        );
    }
    let r = &report.recommended;
    println!(
        "\nrecommended: layer {} (AUROC {:.2}), alpha {}, screening layer {}: {}{}",
        r.layer,
        best.map_or(f32::NAN, |b| b.auroc),
        r.alpha.map_or("none".to_string(), |a| a.to_string()),
        r.screen_layer,
        r.reason,
        if a.save { " (saved in the vector file)" } else { "" }
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub vector: PathBuf,
    /// JSONL dataset: {"messages":[...]} or {"prompt","response"} per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Per-sample scores (JSONL, input order, with line numbers and ranks).
    #[arg(long)]
    pub out: PathBuf,
    /// Raw projection of the dataset response only (no generation; much faster).
    #[arg(long)]
    pub cheap: bool,
    /// Residual index read (default: the vector file's screening layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Longest own answer generated per sample (projection difference; the default matches the calibration's
    /// own answers, which the z-scores are measured against).
    #[arg(long, default_value_t = monitor::CALIBRATION_TOKENS)]
    pub max_tokens: usize,
    /// Flag samples whose calibrated score (z) is at least this.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub threshold: f32,
    /// Flag samples whose raw score is at least this (instead of --threshold).
    #[arg(long, allow_negative_numbers = true)]
    pub score_threshold: Option<f32>,
    /// Write the flagged samples (original lines) here.
    #[arg(long)]
    pub flagged: Option<PathBuf>,
    /// Write the kept (not flagged) samples (original lines) here.
    #[arg(long)]
    pub kept: Option<PathBuf>,
    /// Write a CSV report (rank, line, score, z, flagged, prompt, response).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Writes `text` to `path` atomically: a reader sees the old file or the whole new one.
fn write_file(path: &Path, text: &str) -> CliResult<()> {
    files::write_atomic(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Where an output of a screening run goes: its own path when the run screened every sample, the path with
/// `.partial` appended when it was interrupted (so that a partial "kept" file is never taken for the whole).
fn output_path(path: &Path, partial: bool) -> PathBuf {
    if partial {
        let mut p = path.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    } else {
        path.to_path_buf()
    }
}

pub fn run_screen(a: ScreenArgs) -> CliResult<()> {
    let outputs: Vec<&Path> = [Some(a.out.as_path()), a.flagged.as_deref(), a.kept.as_deref(), a.csv.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    files::check_outputs(&outputs, &[a.data.as_path(), a.vector.as_path(), a.model.model.as_path()])?;
    let vector = load_vector(&a.vector)?;
    let bytes = std::fs::read(&a.data).map_err(|e| format!("{}: {e}", a.data.display()))?;
    let parsed = dataset::parse_jsonl_bytes(&bytes);
    drop(bytes);
    for e in &parsed.errors {
        eprintln!("{}: {e} (skipped)", a.data.display());
    }
    if parsed.samples.is_empty() {
        return Err(format!("{}: no valid samples ({} malformed lines)", a.data.display(), parsed.errors.len()));
    }
    let opts = screen::ScreenOptions { layer: a.layer, cheap: a.cheap, max_tokens: a.max_tokens, ..Default::default() };
    let start = Instant::now();
    let mut loaded = load(&a.model)?;
    let stop = interrupt_flag();
    let mut last_report = Instant::now();
    let mut progress = |p: screen::Progress| {
        if last_report.elapsed().as_secs_f64() > 5.0 || p.done == p.total {
            eprintln!("screen: {}/{} samples ({:.0} s)", p.done, p.total, start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if stop.load(Ordering::SeqCst) {
            eprintln!("screen: stopping; the samples screened so far are kept");
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let result = with_backend!(&mut loaded, |b| pollster::block_on(screen::screen(
        &mut b,
        &vector,
        &parsed.samples,
        &opts,
        &mut progress
    ))
    .map_err(err)?);
    for (line, why) in &result.skipped {
        eprintln!("{}: line {line}: not screened: {why}", a.data.display());
    }
    let ranked = result.ranked();
    let flagged_line = |s: &screen::SampleScore| match a.score_threshold {
        Some(t) => s.score >= t,
        None => s.z.is_some_and(|z| z >= a.threshold),
    };
    let rank_of: std::collections::HashMap<usize, usize> =
        ranked.iter().enumerate().map(|(i, s)| (s.line, i + 1)).collect();
    let mut out = String::new();
    for s in &result.scores {
        let mut v = serde_json::to_value(s).map_err(err)?;
        if let Value::Object(m) = &mut v {
            m.insert("rank".into(), json!(rank_of.get(&s.line)));
            m.insert("flagged".into(), json!(flagged_line(s)));
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    let partial = result.cancelled;
    let out_path = output_path(&a.out, partial);
    write_file(&out_path, &out)?;
    let by_line: std::collections::HashMap<usize, &dataset::Sample> =
        parsed.samples.iter().map(|s| (s.line, s)).collect();
    let flagged: Vec<&dataset::Sample> =
        ranked.iter().filter(|s| flagged_line(s)).filter_map(|s| by_line.get(&s.line).copied()).collect();
    let screened: std::collections::HashSet<usize> = result.scores.iter().map(|s| s.line).collect();
    let kept: Vec<&dataset::Sample> = parsed
        .samples
        .iter()
        .filter(|s| screened.contains(&s.line) && !flagged.iter().any(|f| f.line == s.line))
        .collect();
    if let Some(p) = &a.flagged {
        write_file(&output_path(p, partial), &dataset::write_jsonl(flagged.iter().copied()))?;
    }
    if let Some(p) = &a.kept {
        write_file(&output_path(p, partial), &dataset::write_jsonl(kept.iter().copied()))?;
    }
    if let Some(p) = &a.csv {
        let p = &output_path(p, partial);
        let header = ["rank", "line", "score", "z", "flagged", "prompt", "response"];
        let rows: Vec<Vec<String>> = ranked
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let sample = by_line.get(&s.line)?;
                let prompt = sample.prompt.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
                Some(vec![
                    (i + 1).to_string(),
                    s.line.to_string(),
                    format!("{:.4}", s.score),
                    s.z.map_or(String::new(), |z| format!("{z:.3}")),
                    flagged_line(s).to_string(),
                    prompt,
                    sample.response.clone(),
                ])
            })
            .collect();
        write_file(p, &dataset::csv_report(&header, &rows))?;
    }
    // What the flag threshold means: the share of neutral samples expected above it.
    let threshold_json = match a.score_threshold {
        Some(t) => json!({ "score": t, "expected_false_positive_rate": result.null.map(|n| n.false_positive_rate(t)) }),
        None => {
            json!({ "z": a.threshold, "expected_false_positive_rate": result.null.map(|_| monitor::normal_tail(a.threshold)) })
        }
    };
    let report = json!({
        "data": a.data.display().to_string(),
        "method": result.method,
        "layer": result.layer,
        "samples": result.scores.len(),
        "malformed": parsed.errors.iter().map(|e| json!({"line": e.line, "error": e.message})).collect::<Vec<_>>(),
        "skipped": result.skipped.iter().map(|(l, why)| json!({"line": l, "error": why})).collect::<Vec<_>>(),
        "dataset_score": result.dataset_score(),
        "flagged": flagged.len(),
        "cancelled": result.cancelled,
        "unscreened": parsed.samples.len().saturating_sub(result.scores.len() + result.skipped.len()),
        "out": out_path.display().to_string(),
        "top": ranked.iter().take(5).map(|s| json!({"line": s.line, "score": s.score, "z": s.z})).collect::<Vec<_>>(),
        "threshold": threshold_json,
        "null": result.null,
        "seconds": start.elapsed().as_secs_f64(),
        "gpu": loaded.gpu_counts(),
    });
    if a.json {
        print_json(&report);
    } else {
        let rule = match (a.score_threshold, vector.meta.calibration.as_ref()) {
            (Some(t), _) => format!("score >= {t}"),
            (None, Some(c)) => format!(
                "z >= {} (about {:.1}% of neutral samples expected above it; calibrated on {} neutral items)",
                a.threshold,
                100.0 * monitor::normal_tail(a.threshold),
                c.samples
            ),
            (None, None) => {
                format!("z >= {} (the vector has no calibration: nothing can be flagged by z)", a.threshold)
            }
        };
        println!(
            "{} samples screened ({}{}), layer {}: dataset score {:+.3}; {} flagged at {rule}; {} malformed lines. Scores in {}.",
            result.scores.len(),
            result.method,
            if result.cancelled { ", cancelled" } else { "" },
            result.layer,
            result.dataset_score(),
            flagged.len(),
            parsed.errors.len(),
            out_path.display()
        );
    }
    if partial {
        // Non-zero, so that a script never takes an interrupted run for a finished one.
        return Err(format!(
            "screening was interrupted after {} of {} samples: the outputs were written with a .partial suffix \
             ({}), and hold only the samples screened",
            result.scores.len(),
            parsed.samples.len(),
            out_path.display()
        ));
    }
    Ok(())
}

/// `--monitor FILE[:LAYER]`.
pub fn parse_monitor(spec: &str) -> CliResult<(TraitVector, Reading)> {
    let (path, layer) = match spec.rsplit_once(':') {
        Some((p, l)) if !p.is_empty() && l.parse::<usize>().is_ok() => (p, l.parse::<usize>().ok()),
        _ => (spec, None),
    };
    let v = load_vector(Path::new(path))?;
    let r = Reading::new(&v, layer).map_err(|e| format!("--monitor {spec}: {e}"))?;
    Ok((v, r))
}

/// Steering and monitoring settings of one generation.
pub struct Persona {
    pub steer: Vec<(SteerSpec, TraitVector)>,
    pub monitor: Vec<(TraitVector, Reading)>,
}

impl Persona {
    pub fn from_args(steer: &[String], monitor: &[String]) -> CliResult<Self> {
        let steer = steer
            .iter()
            .map(|s| {
                let spec: SteerSpec = s.parse().map_err(err)?;
                let v = load_vector(Path::new(&spec.path))?;
                Ok((spec, v))
            })
            .collect::<CliResult<Vec<_>>>()?;
        let monitor = monitor.iter().map(|s| parse_monitor(s)).collect::<CliResult<Vec<_>>>()?;
        Ok(Persona { steer, monitor })
    }

    fn check(&self, b: &impl Backend) -> CliResult<()> {
        let c = b.config();
        for v in self.steer.iter().map(|(_, v)| v).chain(self.monitor.iter().map(|(v, _)| v)) {
            v.check_model(c.arch.name(), Some(b.model_name()), c.n_layers, c.d_model).map_err(err)?;
        }
        Ok(())
    }

    fn steering(&self, prompt_len: usize) -> CliResult<Vec<Steering>> {
        self.steer
            .iter()
            .map(|(s, v)| steer::steering(v, s.layer, s.alpha, s.positions, prompt_len).map_err(err))
            .collect()
    }
}

/// What a persona-aware generation returns.
pub struct PersonaReply {
    pub reply: GenOut,
    /// Per monitored trait: the score at the last prompt token.
    pub prompt_scores: Vec<monitor::Score>,
    /// `[token][trait]`.
    pub token_scores: Vec<Vec<monitor::Score>>,
}

/// Generates with steering and monitoring on either backend; `on_text` gets each token's text.
pub fn generate(
    loaded: &mut Loaded,
    persona: &Persona,
    prompt: &[u32],
    max_tokens: usize,
    params: &SamplingParams,
    on_text: &mut dyn FnMut(&str),
) -> CliResult<PersonaReply> {
    with_backend!(loaded, |b| generate_on(&mut b, persona, prompt, max_tokens, params, on_text))
}

fn generate_on(
    b: &mut impl Backend,
    persona: &Persona,
    prompt: &[u32],
    max_tokens: usize,
    params: &SamplingParams,
    on_text: &mut dyn FnMut(&str),
) -> CliResult<PersonaReply> {
    persona.check(b)?;
    let steer = persona.steering(prompt.len())?;
    let layers = b.config().n_layers + 1;
    let raw: Vec<Vec<Option<Vec<f32>>>> = persona.monitor.iter().map(|(_, r)| r.monitor_row(layers)).collect();
    let monitor = (!raw.is_empty()).then(|| personascope_model::plan::units(&raw));
    // From the last prompt token on: the prompt's own pass gives the pre-generation reading.
    let project = monitor.as_ref().map(|_| prompt.len().saturating_sub(1)..usize::MAX);
    let spec = GenSpec {
        prompt: prompt.to_vec(),
        max_tokens,
        sampling: params.clone(),
        plan: Plan { steer, project, ..Default::default() },
    };
    let mut replies = pollster::block_on(backend::generate(
        b,
        &[spec],
        monitor,
        &mut |t| {
            on_text(t.text);
            Flow::Continue
        },
        &mut |_| Flow::Continue,
    ))
    .map_err(err)?;
    let reply = replies.pop().ok_or("no reply")?;
    let token_scores = reply
        .scores
        .iter()
        .map(|per_trait| {
            persona
                .monitor
                .iter()
                .enumerate()
                .map(|(t, (_, r))| {
                    r.token_score(per_trait.get(t).and_then(|l| l.get(r.layer)).copied().unwrap_or(f32::NAN))
                })
                .collect()
        })
        .collect();
    let prompt_scores = persona
        .monitor
        .iter()
        .enumerate()
        .map(|(t, (_, r))| {
            r.token_score(reply.prompt_scores.get(t).and_then(|l| l.get(r.layer)).copied().unwrap_or(f32::NAN))
        })
        .collect();
    Ok(PersonaReply { reply, prompt_scores, token_scores })
}

/// JSON of the monitor readings: per trait, the prompt score and per-token scores.
pub fn scores_json(persona: &Persona, r: &PersonaReply) -> Value {
    json!(persona
        .monitor
        .iter()
        .enumerate()
        .map(|(t, (_, reading))| json!({
            "trait": reading.trait_name,
            "layer": reading.layer,
            "prompt_last": r.prompt_scores.get(t),
            "tokens": r.token_scores.iter().map(|s| s.get(t)).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}
