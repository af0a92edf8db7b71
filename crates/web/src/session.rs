//! The browser-facing session, independent of JavaScript: a model on the GPU plus the persona state of the page
//! (loaded trait vectors, steering and monitoring settings, the last screened dataset). Every method takes and
//! returns JSON (`serde_json::Value`) so the wasm bindings stay a thin layer; the JSON is built from the typed
//! shapes of [`crate::api`], which the TypeScript declarations are generated from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use personascope_gpu::{AdapterChoice, EngineOptions, Gpu, GpuModel};
use personascope_model::schedule::GenSpec;
use personascope_model::Plan;
use personascope_model::{Flow, Message, SamplingParams, Steering};
use personascope_persona::backend;
use personascope_persona::monitor::{self, Reading};
use personascope_persona::steer::{self, Positions};
use personascope_persona::vector_file::{self, TraitVector};
use personascope_persona::{dataset, eval, extract, screen, stats, TraitDefinition};
use serde::Serialize;
use serde_json::{json, Value};

/// KV-cache rows in the browser: enough for a chat, small enough for any WebGPU adapter.
pub const MAX_POSITIONS: usize = 1024;

use crate::api::{
    ChatOptions, ChatReply, ChatToken, EvaluateOptions, ExtractOptions, Features, LineMessage, ModelInfo, MonitorEntry,
    Progress, ScreenOptions, ScreenResult, ScreenedSample, SteeringEntry, TraitScore, VectorInfo,
};
pub use crate::error::{ApiError, ErrorCode};

pub type Result<T> = std::result::Result<T, ApiError>;

/// A rejected input (serde, the sampler's and the steering's own checks).
fn err(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, e.to_string())
}

/// A typed result as the JSON the bindings send.
fn value<T: Serialize>(t: &T) -> Result<Value> {
    serde_json::to_value(t).map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding a result: {e}")))
}

/// A progress event.
fn progress(stage: &str, done: usize, total: usize) -> Value {
    value(&Progress { stage: stage.into(), done, total }).unwrap_or(Value::Null)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| format!("{what}: {e}").into())
}

/// The first `n` items of the neutral set (all when None); at least one.
fn neutral(n: Option<usize>) -> Vec<monitor::NeutralItem> {
    let all = monitor::neutral_set();
    let n = n.unwrap_or(all.len()).clamp(1, all.len().max(1));
    all.into_iter().take(n).collect()
}

/// A model on a GPU with the page's persona state.
pub struct Session {
    model: GpuModel,
    /// GPU errors no error scope caught (wgpu's default handler would panic): reported by the next call.
    errors: Arc<Mutex<Vec<String>>>,
    /// Set by the page's Stop / Cancel; every long call clears it when it starts and polls it as it goes.
    abort: Arc<AtomicBool>,
    vectors: Vec<Option<TraitVector>>,
    steering: Vec<(usize, usize, f32, Positions)>,
    /// (vector id, reading).
    monitor: Vec<(usize, Reading)>,
    screened: Option<dataset::Parsed>,
}

impl Session {
    /// Requests the adapter on `backends` (the browser's WebGPU on wasm32) and loads the GGUF file's bytes.
    /// `progress(done, total)` follows the weights' upload (blocks, then embedding and head).
    pub async fn load(
        bytes: &[u8],
        backends: personascope_gpu::wgpu::Backends,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let gpu = Gpu::request(AdapterChoice::HighPerformance, backends)
            .await
            .map_err(|e| ApiError::from(e).context("WebGPU"))?;
        Self::on_gpu(gpu, bytes, progress).await
    }

    /// Loads onto a GPU someone else opened (tests bring lavapipe).
    pub async fn on_gpu(gpu: Gpu, bytes: &[u8], progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        gpu.device.on_uncaptured_error(Arc::new(move |e| {
            if let Ok(mut list) = sink.lock() {
                list.push(e.to_string());
            }
        }));
        let options = EngineOptions { max_positions: MAX_POSITIONS, ..EngineOptions::default() };
        let model = GpuModel::load_with_progress(gpu, bytes, options, progress).await.map_err(|e| {
            // What the loader rejects in the file (as opposed to the GPU's limits) is the model's fault.
            let e = ApiError::from(e);
            let code = if e.code == ErrorCode::InvalidInput { ErrorCode::InvalidModel } else { e.code };
            ApiError::new(code, e.message).context("loading the model")
        })?;
        let session = Session {
            model,
            errors,
            abort: Arc::new(AtomicBool::new(false)),
            vectors: Vec::new(),
            steering: Vec::new(),
            monitor: Vec::new(),
            screened: None,
        };
        session.check("loading the model")?;
        Ok(session)
    }

    /// The flag a page's Stop button sets (shared, so it can be set while a call is running).
    pub fn abort_flag(&self) -> Arc<AtomicBool> {
        self.abort.clone()
    }

    fn start_long_call(&self) {
        self.abort.store(false, Ordering::SeqCst);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// Fails with the GPU errors reported since the last check, if any.
    fn check(&self, what: &str) -> Result<()> {
        let list = match self.errors.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => vec!["the GPU error log is poisoned".into()],
        };
        if list.is_empty() {
            Ok(())
        } else {
            let code = if self.device_lost().is_some() { ErrorCode::DeviceLost } else { ErrorCode::GpuError };
            Err(ApiError::new(code, format!("GPU error while {what}: {}", list.join("; "))))
        }
    }

    /// Why the GPU device was lost, once it has been: every call fails from then on, and only a new device (a
    /// reload of the page) brings the engine back.
    pub fn device_lost(&self) -> Option<String> {
        self.model.gpu.lost()
    }

    /// Destroys the GPU device as a driver reset would, so that a page can test its recovery path (the device is
    /// gone for good: every later call fails with [`ErrorCode::DeviceLost`]).
    pub fn lose_device(&self) {
        self.model.gpu.device.destroy();
        // The loss callback runs on the device's next maintenance.
        let _ = self.model.gpu.device.poll(personascope_gpu::wgpu::PollType::Poll);
    }

    /// `e` as the caller should see it: after a device loss every failure is that loss, whatever step noticed it.
    pub fn seal(&self, e: ApiError) -> ApiError {
        let Some(reason) = self.device_lost() else { return e };
        let mut message = format!("the GPU device was lost ({reason}); reload the page to continue");
        if e.code != ErrorCode::DeviceLost {
            message.push_str(&format!(" [{}]", e.message));
        }
        ApiError::new(ErrorCode::DeviceLost, message)
    }

    /// The adapter (browsers may hide its name) and the optional features in use.
    pub fn adapter(&self) -> String {
        let gpu = &self.model.gpu;
        let name = if gpu.adapter.name.is_empty() { "(name hidden)" } else { gpu.adapter.name.as_str() };
        format!(
            "{name} on {:?} ({:?}) [f16: {}, subgroups: {}, timestamps: {}]",
            gpu.adapter.backend, gpu.adapter.device_type, gpu.caps.f16, gpu.caps.subgroups, gpu.caps.timestamps
        )
    }

    pub fn model_name(&self) -> &str {
        &self.model.name
    }

    /// Model and device facts for the page.
    pub fn info(&self) -> Value {
        let c = &self.model.config;
        let caps = &self.model.gpu.caps;
        let info = ModelInfo {
            model: self.model.name.clone(),
            architecture: c.arch.name().into(),
            layers: c.n_layers,
            width: c.d_model,
            vocab: c.vocab_size,
            max_positions: self.model.options().max_positions,
            gpu_bytes: self.model.gpu_bytes,
            adapter: self.adapter(),
            features: Features { f16: caps.f16, subgroups: caps.subgroups, timestamps: caps.timestamps },
        };
        value(&info).unwrap_or(Value::Null)
    }

    fn messages(messages_json: &str) -> Result<Vec<Message>> {
        let messages: Vec<Message> = serde_json::from_str(messages_json)
            .map_err(|e| format!("messages must be a JSON array of {{\"role\", \"content\"}} objects: {e}"))?;
        personascope_model::chat::check_messages(&messages)?;
        Ok(messages)
    }

    /// Prompt ids of `messages_json` (`[{"role", "content"}, ...]`) with the chat template applied.
    pub fn encode(&self, messages_json: &str) -> Result<Vec<u32>> {
        let messages = Self::messages(messages_json)?;
        self.model
            .template
            .encode_prompt(&self.model.tokenizer, &messages)
            .map_err(|e| format!("chat template: {e}").into())
    }

    /// Greedy reply ids (without the end-of-turn token), at most `max_tokens`, with no steering or monitoring.
    pub async fn greedy(&mut self, messages_json: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let prompt = self.encode(messages_json)?;
        self.check_prompt(&prompt)?;
        let g = self
            .model
            .generate(&prompt, max_tokens, &SamplingParams::greedy(), &mut |_, _| Flow::Continue)
            .await
            .map_err(|e| ApiError::from(e).context("generation"))?;
        self.check("generating")?;
        Ok(g.ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.model.tokenizer.decode(ids, true).map_err(|e| format!("decoding: {e}").into())
    }

    fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        let room = self.model.options().max_positions;
        if prompt.len() >= room {
            return Err(ApiError::new(
                ErrorCode::TooLong,
                format!("the conversation has {} tokens; this engine holds {room}", prompt.len()),
            ));
        }
        Ok(())
    }

    fn vector(&self, id: usize) -> Result<&TraitVector> {
        self.vectors
            .get(id)
            .and_then(Option::as_ref)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownVector, format!("no trait vector with id {id}")))
    }

    fn steering_for(&self, prompt_len: usize) -> Result<Vec<Steering>> {
        self.steering
            .iter()
            .map(|&(id, layer, alpha, pos)| Ok(steer::steering(self.vector(id)?, layer, alpha, pos, prompt_len)?))
            .collect()
    }

    fn scores(&self, per_trait_layer: &[Vec<f32>]) -> Vec<TraitScore> {
        let readings = self.monitor.iter().map(|(_, r)| r);
        readings.enumerate().map(|(t, r)| trait_score(r, per_trait_layer.get(t))).collect()
    }

    /// A streamed reply to `messages_json` with the session's steering and monitoring. `on_token` gets
    /// `{id, text, index, scores: [{trait, layer, raw, z, percentile}]}` per token; abort stops it (the reply so far
    /// is returned with stop = "cancelled").
    pub async fn chat(
        &mut self,
        messages_json: &str,
        options_json: &str,
        on_token: &mut dyn FnMut(Value),
    ) -> Result<Value> {
        self.start_long_call();
        let o: ChatOptions = parse("chat options", options_json)?;
        let params = SamplingParams {
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            repetition_penalty: o.repetition_penalty,
            seed: o.seed,
        };
        params.validate().map_err(err)?;
        let prompt = self.encode(messages_json)?;
        self.check_prompt(&prompt)?;
        let steering = if o.unsteered { Vec::new() } else { self.steering_for(prompt.len())? };
        let layers = self.model.config.n_layers + 1;
        let raw: Vec<Vec<Option<Vec<f32>>>> = self.monitor.iter().map(|(_, r)| r.monitor_row(layers)).collect();
        let monitor = (!raw.is_empty()).then(|| personascope_model::plan::units(&raw));
        let abort = self.abort.clone();
        let monitor_readings: Vec<Reading> = self.monitor.iter().map(|(_, r)| r.clone()).collect();
        // From the last prompt token on: the prompt's own pass gives the pre-generation reading.
        let project = monitor.as_ref().map(|_| prompt.len() - 1..usize::MAX);
        let spec = GenSpec {
            prompt: prompt.clone(),
            max_tokens: o.max_tokens,
            sampling: params,
            plan: Plan { steer: steering.clone(), project, ..Default::default() },
        };
        let mut replies = backend::generate(
            &mut self.model,
            &[spec],
            monitor,
            &mut |t| {
                let scores =
                    monitor_readings.iter().enumerate().map(|(i, r)| trait_score(r, t.scores.get(i))).collect();
                let token = ChatToken { id: t.id, text: t.text.into(), index: t.index, scores };
                on_token(value(&token).unwrap_or(Value::Null));
                flow(&abort)
            },
            &mut |_| Flow::Continue,
        )
        .await?;
        let reply = replies.pop().ok_or("no reply")?;
        self.check("generating")?;
        let token_scores = reply.scores.iter().map(|s| self.scores(s)).collect();
        // The pre-generation reading: the last prompt token, under the same steering.
        let prompt_scores = if self.monitor.is_empty() { Vec::new() } else { self.scores(&reply.prompt_scores) };
        value(&ChatReply {
            ids: reply.ids,
            text: reply.text,
            stop: reply.stop,
            prompt_tokens: prompt.len(),
            prompt_scores,
            token_scores,
            steered: !steering.is_empty(),
        })
    }

    /// Steering for the next replies: `[{vector, layer, alpha, positions: "all"|"prompt"|"response"}]`.
    pub fn set_steering(&mut self, json: &str) -> Result<()> {
        let entries: Vec<SteeringEntry> = parse("steering", json)?;
        let mut steering = Vec::with_capacity(entries.len());
        for e in entries {
            let v = self.vector(e.vector)?;
            if !e.alpha.is_finite() {
                return Err(format!("steering alpha {} is not a finite number", e.alpha).into());
            }
            let positions: Positions = e.positions.as_deref().unwrap_or("response").parse().map_err(err)?;
            // Validates the layer against the vector.
            steer::steering(v, e.layer, e.alpha, positions, 1)?;
            steering.push((e.vector, e.layer, e.alpha, positions));
        }
        self.steering = steering;
        Ok(())
    }

    /// Monitored traits: `[{vector, layer?}]` (layer defaults to the vector's recommended one).
    pub fn set_monitor(&mut self, json: &str) -> Result<()> {
        let entries: Vec<MonitorEntry> = parse("monitor", json)?;
        if entries.len() > self.model.options().max_traits {
            let most = self.model.options().max_traits;
            return Err(format!("{} monitored traits; at most {most}", entries.len()).into());
        }
        let readings = entries
            .iter()
            .map(|e| Ok((e.vector, Reading::new(self.vector(e.vector)?, e.layer)?)))
            .collect::<Result<Vec<_>>>()?;
        self.monitor = readings;
        Ok(())
    }

    fn vector_info(&self, id: usize) -> Result<Value> {
        let v = self.vector(id)?;
        let m = &v.meta;
        value(&VectorInfo {
            id,
            trait_name: m.trait_name.clone(),
            description: m.description.clone(),
            mode: m.mode.clone(),
            model: m.model_name.clone(),
            layers: m.n_layers,
            layer: m.layer,
            alpha: m.alpha,
            screen_layer: m.screen_layer,
            counts: m.counts,
            calibrated: m.calibration.is_some(),
            norms: v.rows.iter().map(|r| stats::norm(r)).collect(),
        })
    }

    fn add_vector(&mut self, v: TraitVector) -> Result<Value> {
        let c = &self.model.config;
        let v = v
            .for_model(c.arch.name(), Some(&self.model.name), c.n_layers, c.d_model)
            .map_err(|e| ApiError::new(ErrorCode::InvalidVector, e.to_string()))?;
        self.vectors.push(Some(v));
        self.vector_info(self.vectors.len() - 1)
    }

    /// Imports a control-vector GGUF (ours, llama.cpp's or repeng's) made for this model.
    pub fn import_vector(&mut self, bytes: &[u8], file_name: &str) -> Result<Value> {
        let v = vector_file::from_gguf(bytes, file_name)
            .map_err(|e| ApiError::new(ErrorCode::InvalidVector, e.to_string()))?;
        self.add_vector(v)
    }

    pub fn export_vector(&self, id: usize) -> Result<Vec<u8>> {
        vector_file::to_gguf(self.vector(id)?).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    }

    pub fn vectors(&self) -> Value {
        json!((0..self.vectors.len()).filter_map(|i| self.vector_info(i).ok()).collect::<Vec<_>>())
    }

    /// Forgets a vector (and any steering or monitoring that used it).
    pub fn remove_vector(&mut self, id: usize) -> Result<()> {
        self.vector(id)?;
        if let Some(slot) = self.vectors.get_mut(id) {
            *slot = None;
        }
        self.steering.retain(|s| s.0 != id);
        self.monitor.retain(|m| m.0 != id);
        Ok(())
    }

    /// Extracts a vector for `trait_json` (a trait definition, or a built-in name as a JSON string), calibrates it
    /// on the neutral set and adds it. `on_progress` gets `{stage, done, total}`.
    pub async fn extract(
        &mut self,
        trait_json: &str,
        options_json: &str,
        on_progress: &mut dyn FnMut(Value),
    ) -> Result<Value> {
        self.start_long_call();
        let def = trait_from_json(trait_json)?;
        let o: ExtractOptions =
            if options_json.trim().is_empty() { Default::default() } else { parse("extract options", options_json)? };
        let mut opts = extract::ExtractOptions::default();
        if let Some(m) = &o.mode {
            opts.mode = m.parse().map_err(err)?;
        }
        opts.rollouts = o.rollouts.unwrap_or(opts.rollouts);
        opts.max_tokens = o.max_tokens.unwrap_or(opts.max_tokens);
        opts.pairs = o.pairs;
        opts.questions = o.questions;
        opts.sampling.seed = o.seed.unwrap_or(0);
        opts.sampling.temperature = o.temperature.unwrap_or(opts.sampling.temperature);
        let abort = self.abort.clone();
        let b = &mut self.model;
        let ex = extract::extract(b, &def, &opts, &mut extract::KeepNonEmpty, &mut |p| {
            on_progress(progress("extract", p.done, p.total));
            flow(&abort)
        })
        .await?;
        let mut v = ex.vector;
        let abort = self.abort.clone();
        let calibration = monitor::calibrate_with_progress(b, &v, &neutral(o.calibration_items), &mut |p| {
            on_progress(progress("calibrate", p.done, p.total));
            flow(&abort)
        })
        .await?;
        v.meta.calibration = Some(calibration);
        self.check("extracting")?;
        self.add_vector(v)
    }

    /// Evaluates vector `id` for `trait_json`; stores the recommended layer, alpha and screening layer in the
    /// vector and returns the whole report.
    pub async fn evaluate(
        &mut self,
        trait_json: &str,
        id: usize,
        options_json: &str,
        on_progress: &mut dyn FnMut(Value),
    ) -> Result<Value> {
        self.start_long_call();
        let def = trait_from_json(trait_json)?;
        let o: EvaluateOptions =
            if options_json.trim().is_empty() { Default::default() } else { parse("eval options", options_json)? };
        let mut opts = eval::EvalOptions::default();
        if let Some(a) = o.alphas {
            opts.alphas = a;
        }
        opts.steer_layers = o.layers;
        opts.pairs = o.pairs;
        opts.questions = o.questions;
        let vector = self.vector(id)?.clone();
        let abort = self.abort.clone();
        let neutral = neutral(o.neutral_items);
        let report = eval::evaluate(&mut self.model, &def, &vector, &neutral, &opts, &mut |p| {
            on_progress(progress(p.stage, p.done, p.total));
            flow(&abort)
        })
        .await?;
        self.check("evaluating")?;
        if let Some(Some(v)) = self.vectors.get_mut(id) {
            v.meta.layer = Some(report.recommended.layer);
            v.meta.alpha = report.recommended.alpha;
            v.meta.screen_layer = Some(report.recommended.screen_layer);
        }
        serde_json::to_value(&report).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    }

    /// Screens a JSONL dataset with vector `id`. Malformed lines are listed, not fatal; cancel keeps the scores so
    /// far. Returns `{layer, method, cancelled, dataset_score, errors: [{line, message}], skipped: [{line, message}]
    /// (samples that could not be screened, e.g. too long), samples: [{line, prompt,
    /// response, score, projection, own_projection, z, rank}]}`.
    pub async fn screen(
        &mut self,
        id: usize,
        jsonl: &[u8],
        options_json: &str,
        on_progress: &mut dyn FnMut(Value),
    ) -> Result<Value> {
        self.start_long_call();
        let o: ScreenOptions =
            if options_json.trim().is_empty() { Default::default() } else { parse("screen options", options_json)? };
        let opts = screen::ScreenOptions {
            layer: o.layer,
            cheap: o.cheap.unwrap_or(true),
            max_tokens: o.max_tokens.unwrap_or(monitor::CALIBRATION_TOKENS),
            // A browser's GPU may be a slow software one: progress and Stop every few samples.
            chunk: 8,
        };
        // Bytes, not a JS string: invalid UTF-8 then rejects only its own line, with its number, where a
        // browser's text decoding would have replaced it silently.
        let parsed = dataset::parse_jsonl_bytes(jsonl);
        let vector = self.vector(id)?.clone();
        let abort = self.abort.clone();
        let result = if parsed.samples.is_empty() {
            None
        } else {
            Some(
                screen::screen(&mut self.model, &vector, &parsed.samples, &opts, &mut |p| {
                    on_progress(progress("screen", p.done, p.total));
                    flow(&abort)
                })
                .await?,
            )
        };
        self.check("screening")?;
        let errors = parsed.errors.iter().map(|e| LineMessage { line: e.line, message: e.message.clone() }).collect();
        let Some(result) = result else {
            self.screened = Some(parsed);
            let empty = ScreenResult {
                layer: None,
                method: None,
                null: None,
                cancelled: false,
                dataset_score: None,
                errors,
                skipped: Vec::new(),
                samples: Vec::new(),
            };
            return value(&empty);
        };
        let skipped =
            result.skipped.iter().map(|(line, why)| LineMessage { line: *line, message: why.clone() }).collect();
        let ranks: std::collections::HashMap<usize, usize> =
            result.ranked().iter().enumerate().map(|(i, s)| (s.line, i + 1)).collect();
        let samples = result
            .scores
            .iter()
            .filter_map(|s| {
                let sample = parsed.samples.iter().find(|x| x.line == s.line)?;
                Some(ScreenedSample {
                    line: s.line,
                    prompt: sample.prompt.clone(),
                    response: sample.response.clone(),
                    score: s.score,
                    projection: s.projection,
                    own_projection: s.own_projection,
                    own_response: s.own_response.clone(),
                    z: s.z,
                    rank: ranks.get(&s.line).copied(),
                })
            })
            .collect();
        let out = value(&ScreenResult {
            layer: Some(result.layer),
            method: Some(result.method.into()),
            null: result.null,
            cancelled: result.cancelled,
            dataset_score: finite(result.dataset_score()),
            errors,
            skipped,
            samples,
        });
        self.screened = Some(parsed);
        out
    }

    /// The original JSONL lines of the last screened dataset whose line numbers are in `lines_json`, in that order
    /// (export of kept or flagged samples).
    pub fn export_samples(&self, lines_json: &str) -> Result<String> {
        let lines: Vec<usize> = parse("line numbers", lines_json)?;
        let parsed = self.screened.as_ref().ok_or("no dataset has been screened yet")?;
        let picked: Vec<&dataset::Sample> =
            lines.iter().filter_map(|l| parsed.samples.iter().find(|s| s.line == *l)).collect();
        Ok(dataset::write_jsonl(picked))
    }

    /// A CSV of rows (`[[field, ...], ...]`) under `header`, escaped against spreadsheet formula injection.
    pub fn csv(header_json: &str, rows_json: &str) -> Result<String> {
        let header: Vec<String> = parse("CSV header", header_json)?;
        let rows: Vec<Vec<String>> = parse("CSV rows", rows_json)?;
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        Ok(dataset::csv_report(&h, &rows))
    }

    /// Is an abort pending? (For callers that poll between their own steps.)
    pub fn abort_requested(&self) -> bool {
        self.aborted()
    }
}

/// Stop when the page's abort flag is set (the progress and token callbacks of every long call).
fn flow(abort: &AtomicBool) -> Flow {
    if abort.load(Ordering::SeqCst) {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

/// Trait `r`'s score from its row of projections per residual index (NaN where the row lacks its layer).
fn trait_score(r: &Reading, per_layer: Option<&Vec<f32>>) -> TraitScore {
    let raw = per_layer.and_then(|l| l.get(r.layer)).copied().unwrap_or(f32::NAN);
    let s = r.token_score(raw);
    TraitScore {
        trait_name: r.trait_name.clone(),
        layer: r.layer,
        raw: finite(s.raw),
        z: s.z,
        percentile: s.percentile,
    }
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// A trait definition object, or a built-in trait's name as a JSON string.
fn trait_from_json(json: &str) -> Result<TraitDefinition> {
    if let Ok(name) = serde_json::from_str::<String>(json) {
        return personascope_persona::builtin_by_name(&name).ok_or_else(|| {
            let names = personascope_persona::BUILTIN_NAMES.join(", ");
            ApiError::new(ErrorCode::InvalidTrait, format!("no built-in trait {name:?} (built in: {names})"))
        });
    }
    personascope_persona::parse(json)
        .map_err(|e| ApiError::new(ErrorCode::InvalidTrait, format!("trait definition: {e}")))
}

/// The built-in trait definitions.
pub fn builtin_traits() -> Value {
    json!(personascope_persona::builtin())
}

#[cfg(test)]
mod tests {
    use super::Session;

    #[test]
    fn messages_need_known_roles_and_content() {
        assert_eq!(Session::messages(r#"[{"role":"user","content":"Hi"}]"#).map(|m| m.len()), Ok(1));
        let e = Session::messages(r#"[{"role":"user","content":"a"},{"role":"tool","content":"b"}]"#).unwrap_err();
        assert!(e.contains("message 1") && e.contains("\"tool\""), "{e}");
        assert!(Session::messages("[]").unwrap_err().contains("empty"));
        let e = Session::messages(r#"[{"role":"user"}]"#).unwrap_err();
        assert!(e.contains("content"), "{e}");
        assert!(Session::messages("{").is_err());
    }
}
