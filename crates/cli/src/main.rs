//! `personascope`: the command-line face of the engine. Machine-readable commands print one JSON object on
//! stdout; errors go to stderr with a non-zero exit status.

mod bench;
mod persona_cmd;

use clap::{Args, Parser, Subcommand, ValueEnum};
use personascope_gguf::Gguf;
use personascope_gpu::{AdapterChoice, EngineOptions, Gpu, GpuModel};
use personascope_model::{
    ChatTemplate, Logits, Message, Model, NoHook, Plan, SamplingParams, Span, StopReason, Tokenizer,
};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "personascope",
    version,
    about = "See and steer the personality of a small language model: a GGUF engine with residual-stream hooks",
    long_about = "See and steer the personality of a small language model.\n\n\
        Runs GGUF models (llama and qwen2 families; SmolLM2-135M-Instruct by default) on the CPU reference path.\n\
        Install the default model with `bash models/fetch.sh`; it lands in models/SmolLM2-135M-Instruct.Q4_1.gguf.\n\n\
        Messages files are JSON arrays of {\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"...\"}.\n\
        Layer numbering follows the persona-vector convention: residual index 0 is the token embeddings and\n\
        index k (1..=N) is the output of block k-1.",
    after_help = "Examples:\n  \
        personascope chat models/SmolLM2-135M-Instruct.Q4_1.gguf\n  \
        personascope inspect models/SmolLM2-135M-Instruct.Q4_1.gguf\n  \
        echo '[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]' > m.json\n  \
        personascope generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --messages m.json --max-tokens 32 --greedy --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The CPU reference forward pass.
    Cpu,
    /// The WGSL engine on the native GPU API (Vulkan, Metal, DX12) through wgpu.
    /// PERSONASCOPE_ADAPTER=fallback picks the software adapter (lavapipe).
    Gpu,
}

#[derive(Args)]
struct ModelArgs {
    /// Path to a GGUF model file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
}

#[derive(Args)]
struct Sampling {
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    /// Sampling temperature (> 0 samples; 0 is greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens when sampling (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Penalize tokens already in the context (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl Sampling {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: if self.greedy { 0.0 } else { self.temperature.unwrap_or(0.0) },
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model in the terminal (type /help inside for commands).
    Chat {
        /// Path to a GGUF model file.
        model: PathBuf,
        /// System prompt (otherwise the model template's default applies).
        #[arg(long)]
        system: Option<String>,
        /// Most tokens per reply.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature for replies (0 = greedy).
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 0.9)]
        top_p: f32,
        #[arg(long, default_value_t = 1.1)]
        repetition_penalty: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        persona: PersonaArgs,
    },
    /// Show a model's architecture, size, tensor types, tokenizer and chat template.
    Inspect {
        /// Path to a GGUF file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Tokenize a text file as plain text (no special tokens added or matched): {"ids":[...]}.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text_file: PathBuf,
    },
    /// Render a conversation with the model's chat template and generation prompt: {"text": "..."}.
    Render {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        messages: PathBuf,
    },
    /// Top logits at the last prompt position: {"prompt_ids":[...],"top":[[id,logit],...]}.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        messages: PathBuf,
        #[arg(long, default_value_t = 20)]
        top_k: usize,
    },
    /// L2 norm of each block's output at the last prompt position, block 0 first: {"norms":[...]}.
    Residuals {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        messages: PathBuf,
    },
    /// Measure load time, prefill and decode speed, and the cost of monitoring (7 vectors, all layers) and
    /// steering (one vector, response positions).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Repetitions of each measurement; the best is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also report per-kernel GPU time from timestamp queries (GPU backend only).
        #[arg(long)]
        profile: bool,
        /// Time the persona jobs instead: prompt-last and response-mode extraction, calibration, evaluation and
        /// screening (cheap and projection difference) of one built-in trait.
        #[arg(long)]
        persona: bool,
        #[command(flatten)]
        persona_sizes: PersonaSizes,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate a reply: {"prompt_ids":[...],"ids":[...],"text":"..."} with --json, else the text.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        messages: PathBuf,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: Sampling,
        /// Print JSON (with timing) instead of streaming text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        persona: PersonaArgs,
    },
    /// Extract a trait vector (persona vector) into a control-vector GGUF file.
    Extract(persona_cmd::ExtractArgs),
    /// Evaluate a trait vector: per-layer separation, steering sweep, recommended layer and alpha.
    Eval(persona_cmd::EvalArgs),
    /// Screen a JSONL fine-tuning dataset for samples that push the model toward a trait.
    Screen(persona_cmd::ScreenArgs),
}

#[derive(Args)]
struct PersonaArgs {
    /// Steer: FILE:LAYER:ALPHA[:all|prompt|response] (positions default to response; negative alpha suppresses).
    /// Repeatable.
    #[arg(long = "steer")]
    steer: Vec<String>,
    /// Monitor: FILE[:LAYER] (layer defaults to the file's recommended one); per-token scores in --json output.
    /// Repeatable.
    #[arg(long = "monitor")]
    monitor: Vec<String>,
}

type CliResult<T> = Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("personascope: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &ModelArgs) -> CliResult<Model> {
    load_path(&args.model)
}

/// Sizes of `bench --persona`.
#[derive(Args, Debug, Clone)]
struct PersonaSizes {
    /// Built-in trait extracted, evaluated and screened for.
    #[arg(long = "persona-trait", default_value = "impolite")]
    trait_name: String,
    /// Extraction and evaluation questions used (default: all).
    #[arg(long = "persona-questions")]
    questions: Option<usize>,
    /// Instruction pairs used (default: all).
    #[arg(long = "persona-pairs")]
    pairs: Option<usize>,
    /// Screening samples (from tests/data/screening).
    #[arg(long = "persona-samples", default_value_t = 60)]
    samples: usize,
    /// Own-answer tokens in projection-difference screening.
    #[arg(long = "persona-answer-tokens", default_value_t = 48)]
    answer_tokens: usize,
    /// Leave out response-mode extraction (the longest job).
    #[arg(long = "persona-skip-response")]
    skip_response: bool,
    /// Neutral items for calibration and the perplexity cost (default: all).
    #[arg(long = "persona-neutral")]
    neutral: Option<usize>,
}

fn load_gpu(path: &Path) -> CliResult<GpuModel> {
    let gpu = Gpu::request_blocking(AdapterChoice::from_env(), personascope_gpu::wgpu::Backends::PRIMARY)
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    pollster::block_on(GpuModel::load(gpu, &bytes, EngineOptions::default()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Prompt ids for a messages file, and the last-position logits, on either backend.
fn prompt_logits(args: &ModelArgs, messages: &Path) -> CliResult<(Vec<u32>, Vec<f32>)> {
    match args.backend {
        Backend::Cpu => {
            let m = load(args)?;
            let ids = prompt_ids(&m.template, &m.tokenizer, messages)?;
            let mut cache = m.new_cache();
            let logits = m.forward(&mut cache, &ids, &mut NoHook, Logits::Last).map_err(|e| e.to_string())?;
            Ok((ids, logits))
        }
        Backend::Gpu => {
            let mut g = load_gpu(&args.model)?;
            let ids = prompt_ids(&g.template, &g.tokenizer, messages)?;
            let logits = pollster::block_on(g.logits(&ids)).map_err(|e| e.to_string())?;
            Ok((ids, logits))
        }
    }
}

fn load_path(path: &Path) -> CliResult<Model> {
    Model::load(path).map_err(|e| e.to_string())
}

fn read_messages(path: &Path) -> CliResult<Vec<Message>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let messages: Vec<Message> = serde_json::from_str(&text)
        .map_err(|e| format!("{}: expected a JSON array of {{\"role\", \"content\"}} objects: {e}", path.display()))?;
    personascope_model::chat::check_messages(&messages).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(messages)
}

fn prompt_ids(template: &ChatTemplate, tokenizer: &Tokenizer, path: &Path) -> CliResult<Vec<u32>> {
    let messages = read_messages(path)?;
    template.encode_prompt(tokenizer, &messages).map_err(|e| e.to_string())
}

fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

fn run(command: Command) -> CliResult<()> {
    match command {
        Command::Extract(a) => persona_cmd::run_extract(a),
        Command::Eval(a) => persona_cmd::run_eval(a),
        Command::Screen(a) => persona_cmd::run_screen(a),
        Command::Chat { model, system, max_tokens, temperature, top_k, top_p, repetition_penalty, seed, persona } => {
            let params = SamplingParams { temperature, top_k, top_p, repetition_penalty, seed };
            params.validate().map_err(|e| e.to_string())?;
            let persona = persona_cmd::Persona::from_args(&persona.steer, &persona.monitor)?;
            chat(&model, system, max_tokens, params, &persona)
        }
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Tokenize { model, text_file } => {
            let m = load(&model)?;
            let text = std::fs::read_to_string(&text_file).map_err(|e| format!("{}: {e}", text_file.display()))?;
            let ids = m.tokenizer.encode(&text).map_err(|e| e.to_string())?;
            print_json(&json!({ "ids": ids }));
            Ok(())
        }
        Command::Render { model, messages } => {
            let m = load(&model)?;
            let msgs = read_messages(&messages)?;
            let text = m.template.render(&msgs, true).map_err(|e| e.to_string())?;
            print_json(&json!({ "text": text }));
            Ok(())
        }
        Command::Logits { model, messages, top_k } => {
            let (ids, logits) = prompt_logits(&model, &messages)?;
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let top: Vec<_> = order.iter().take(top_k).map(|&i| json!([i, logits[i]])).collect();
            print_json(&json!({ "prompt_ids": ids, "top": top }));
            Ok(())
        }
        Command::Residuals { model, messages } => {
            let l2 = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let norms: Vec<f64> = match model.backend {
                Backend::Cpu => {
                    let m = load(&model)?;
                    let ids = prompt_ids(&m.template, &m.tokenizer, &messages)?;
                    let (last, n) = (ids.len() - 1, m.config.n_layers);
                    let span = Span { positions: last..last + 1, layers: (1..=n).collect() };
                    let plan = Plan { capture: Some(span), ..Default::default() };
                    let out = m.run_plan(&ids, &plan, None).map_err(|e| e.to_string())?;
                    let rows = out.captured.first().map(|(_, r)| r).ok_or("no residuals came back")?;
                    rows[1..].iter().map(|v| l2(v)).collect()
                }
                Backend::Gpu => {
                    let mut g = load_gpu(&model.model)?;
                    let ids = prompt_ids(&g.template, &g.tokenizer, &messages)?;
                    let res = pollster::block_on(g.residuals(&ids)).map_err(|e| e.to_string())?;
                    res[1..].iter().map(|v| l2(v)).collect()
                }
            };
            print_json(&json!({ "norms": norms }));
            Ok(())
        }
        Command::Bench { model, runs, profile, persona, persona_sizes: p, json } => {
            let report = match model.backend {
                _ if persona => {
                    let o = bench::PersonaBench {
                        trait_name: p.trait_name,
                        questions: p.questions,
                        pairs: p.pairs,
                        samples: p.samples,
                        answer_tokens: p.answer_tokens,
                        skip_response: p.skip_response,
                        neutral: p.neutral,
                    };
                    bench::bench_persona_on(&model.model, model.backend == Backend::Gpu, &o)?
                }
                Backend::Cpu if profile => return Err("--profile needs --backend gpu (it reads GPU timestamps)".into()),
                Backend::Cpu => bench::bench_cpu(&model.model, runs.max(1))?,
                Backend::Gpu => bench::bench_gpu(&model.model, runs.max(1), profile)?,
            };
            if json {
                print_json(&report);
            } else {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
            }
            Ok(())
        }
        Command::Generate { model, messages, max_tokens, sampling, json, persona } => {
            let start = Instant::now();
            let mut first_token = None;
            let mut stdout = std::io::stdout();
            let mut on_text = |text: &str| {
                first_token.get_or_insert_with(|| start.elapsed());
                if !json {
                    print!("{text}");
                    let _ = stdout.flush();
                }
            };
            let persona = persona_cmd::Persona::from_args(&persona.steer, &persona.monitor)?;
            let mut loaded = persona_cmd::load(&model)?;
            let prompt = match &loaded {
                persona_cmd::Loaded::Cpu(m) => prompt_ids(&m.template, &m.tokenizer, &messages)?,
                persona_cmd::Loaded::Gpu(g) => prompt_ids(&g.template, &g.tokenizer, &messages)?,
            };
            let start = Instant::now();
            let out =
                persona_cmd::generate(&mut loaded, &persona, &prompt, max_tokens, &sampling.params(), &mut on_text)?;
            let scores = persona_cmd::scores_json(&persona, &out);
            let (ids, text, stop) = (out.reply.ids, out.reply.text, out.reply.stop);
            let total = start.elapsed();
            if json {
                let prefill = first_token.map_or(total, |t| t.min(total)).as_secs_f64();
                let decode_s = total.as_secs_f64() - prefill;
                let decode_tps = if ids.len() > 1 { (ids.len() - 1) as f64 / decode_s } else { 0.0 };
                print_json(&json!({
                    "prompt_ids": prompt,
                    "ids": ids,
                    "text": text,
                    "stop": stop,
                    "scores": scores,
                    "timing": {
                        "first_token_s": prefill,
                        "decode_tok_s": decode_tps,
                        "total_s": total.as_secs_f64(),
                    }
                }));
            } else {
                println!();
            }
            Ok(())
        }
    }
}

fn inspect(path: &Path, as_json: bool) -> CliResult<()> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The summary is taken from one parse, which is dropped before the model load parses the file again: the
    // bytes are moved into the model, not copied.
    let (version, n_tensors, types, params, template, strs) = {
        let g = Gguf::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut types = std::collections::BTreeMap::<String, (usize, u64)>::new();
        for t in g.tensors() {
            let e = types.entry(t.ty.name().to_string()).or_default();
            e.0 += 1;
            e.1 += t.len as u64;
        }
        let params: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
        let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).unwrap_or("");
        let keys = ["general.name", "general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre"];
        let strs = keys.map(|k| g.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string());
        (g.version, g.tensors().len(), types, params, template.to_string(), strs)
    };
    let template_len = template.chars().count();
    let [name, arch, tok_model, tok_pre] = &strs;
    let n_bytes = bytes.len();
    let model = Model::from_bytes(bytes);
    let config = model.as_ref().map(|m| format!("{:?}", m.config)).map_err(|e| e.to_string());
    if as_json {
        print_json(&json!({
            "file": path.display().to_string(),
            "bytes": n_bytes,
            "gguf_version": version,
            "name": name,
            "architecture": arch,
            "parameters": params,
            "tensors": n_tensors,
            "tensor_types": types.iter().map(|(k, (n, b))| (k.clone(), json!({"count": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "tokenizer": { "model": tok_model, "pre": tok_pre },
            "config": config.as_ref().ok(),
            "loadable": config.as_ref().err(),
            "chat_template": template,
        }));
        return Ok(());
    }
    println!("file          {} ({:.1} MB, GGUF v{version})", path.display(), n_bytes as f64 / 1e6);
    println!("name          {name}");
    println!("architecture  {arch}");
    println!("parameters    {:.1} M in {n_tensors} tensors", params as f64 / 1e6);
    for (ty, (n, b)) in &types {
        println!("  {ty:<6} {n:>4} tensors {:>9.1} MB", *b as f64 / 1e6);
    }
    println!("tokenizer     {tok_model} / pre-tokenizer {tok_pre}");
    match &model {
        Ok(m) => {
            let c = &m.config;
            println!(
                "config        {} blocks, width {}, FFN {}, {} heads / {} KV heads of {}, vocab {}, context {}",
                c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.context_length
            );
            println!(
                "              RoPE base {} ({:?} pairs, {} dims), RMSNorm eps {}, tied LM head: {}",
                c.rope_base, c.rope_pairing, c.rope_dim, c.rms_eps, c.tied_embeddings
            );
            println!("residual      indices 0..={} (0 = embeddings, k = output of block k-1)", c.n_layers);
        }
        Err(e) => println!("not loadable  {e}"),
    }
    println!("chat template {template_len} characters");
    Ok(())
}

fn chat(
    path: &Path,
    system: Option<String>,
    max_tokens: usize,
    params: SamplingParams,
    persona: &persona_cmd::Persona,
) -> CliResult<()> {
    eprintln!("loading {} ...", path.display());
    let mut loaded = persona_cmd::Loaded::Cpu(Box::new(load_path(path)?));

    eprintln!(
        "{}. Type a message; /reset starts over, /system TEXT sets the system prompt, /quit leaves.",
        loaded.describe()
    );
    let mut messages: Vec<Message> = Vec::new();
    let mut system = system;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut turn = 0u64;
    loop {
        print!("\n> ");
        let _ = stdout.flush();
        // Bytes, not a String: a line that is not UTF-8 is refused alone instead of ending the chat.
        let mut raw = Vec::new();
        if stdin.lock().read_until(b'\n', &mut raw).map_err(|e| e.to_string())? == 0 {
            println!();
            return Ok(());
        }
        let line = match String::from_utf8(raw) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "(that line is not valid UTF-8 at byte {}; nothing was sent)",
                    e.utf8_error().valid_up_to() + 1
                );
                continue;
            }
        };
        let line = line.trim_end_matches(['\n', '\r']);
        const HELP: &str = "/reset  new conversation\n/system TEXT  set the system prompt (starts over)\n/quit  \
                            leave\n//text  send a message that starts with a slash";
        let line = match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                messages.clear();
                println!("(new conversation)");
                continue;
            }
            "/help" => {
                println!("{HELP}");
                continue;
            }
            cmd if cmd == "/system" || cmd.starts_with("/system ") => {
                system = Some(cmd.trim_start_matches("/system").trim().to_string()).filter(|s| !s.is_empty());
                messages.clear();
                println!("(system prompt set; new conversation)");
                continue;
            }
            cmd if cmd.starts_with("//") => &line[line.find('/').map_or(0, |i| i + 1)..],
            cmd if cmd.starts_with('/') => {
                println!("unknown command {cmd:?}; nothing was sent.\n{HELP}");
                continue;
            }
            _ => line,
        };
        messages.push(Message { role: "user".into(), content: line.to_string() });
        let mut convo = Vec::new();
        if let Some(s) = &system {
            convo.push(Message { role: "system".into(), content: s.clone() });
        }
        convo.extend(messages.iter().cloned());
        let ids = match loaded.encode_prompt(&convo) {
            Ok(ids) => ids,
            Err(e) => {
                // The conversation stays as it was; the user can /reset or try a shorter message.
                messages.pop();
                eprintln!("(not sent: {e})");
                continue;
            }
        };
        let start = Instant::now();
        let mut p = params.clone();
        p.seed = params.seed.wrapping_add(turn);
        turn += 1;
        let out = persona_cmd::generate(&mut loaded, persona, &ids, max_tokens, &p, &mut |t| {
            print!("{t}");
            let _ = stdout.flush();
        });
        match out {
            Ok(out) => {
                let secs = start.elapsed().as_secs_f64();
                if out.reply.stop == StopReason::MaxTokens {
                    print!(" [token limit]");
                }
                eprintln!("\n({} tokens, {:.1} tok/s)", out.reply.ids.len(), out.reply.ids.len() as f64 / secs);
                for (t, (_, r)) in persona.monitor.iter().enumerate() {
                    let zs: Vec<f32> = out.token_scores.iter().filter_map(|s| s.get(t).and_then(|s| s.z)).collect();
                    let prompt_z = out.prompt_scores.get(t).and_then(|s| s.z);
                    eprintln!(
                        "  {} (layer {}): before the reply z {}, reply mean z {}",
                        r.trait_name,
                        r.layer,
                        prompt_z.map_or("n/a".into(), |z| format!("{z:+.2}")),
                        if zs.is_empty() {
                            "n/a".into()
                        } else {
                            format!("{:+.2}", personascope_persona::stats::mean(&zs))
                        }
                    );
                }
                messages.push(Message { role: "assistant".into(), content: out.reply.text });
            }
            Err(e) => {
                eprintln!("\nerror: {e}");
                messages.pop();
            }
        }
    }
}
