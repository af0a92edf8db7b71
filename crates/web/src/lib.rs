//! The GPU engine in the browser: a deliberately small wasm-bindgen API (load a GGUF model onto WebGPU, generate
//! greedily). The target-independent core ([`Session`]) also builds natively, so the workspace checks it; the
//! JavaScript bindings exist on wasm32 only.
//!
//! Nothing reachable from JavaScript panics on purpose: every failure comes back as a `JsError` (a rejected
//! promise) with a message saying what failed.

use personascope_gpu::{AdapterChoice, EngineOptions, Gpu, GpuModel};
use personascope_model::{Message, SamplingParams};
use std::sync::{Arc, Mutex};

/// KV-cache rows in the browser: enough for a chat turn, small enough for any WebGPU adapter.
pub const MAX_POSITIONS: usize = 1024;

/// A model loaded onto a GPU, independent of JavaScript.
pub struct Session {
    model: GpuModel,
    /// GPU errors no error scope caught (wgpu's default handler would panic): reported by the next call.
    errors: Arc<Mutex<Vec<String>>>,
}

impl Session {
    /// Requests the adapter on `backends` (the browser's WebGPU on wasm32) and loads the GGUF file's bytes.
    pub async fn load(bytes: &[u8], backends: personascope_gpu::wgpu::Backends) -> Result<Self, String> {
        let gpu = Gpu::request(AdapterChoice::HighPerformance, backends).await.map_err(|e| format!("WebGPU: {e}"))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        gpu.device.on_uncaptured_error(Arc::new(move |e| {
            if let Ok(mut list) = sink.lock() {
                list.push(e.to_string());
            }
        }));
        let options = EngineOptions { max_positions: MAX_POSITIONS, ..EngineOptions::default() };
        let model = GpuModel::load(gpu, bytes, options).await.map_err(|e| format!("loading the model: {e}"))?;
        let session = Session { model, errors };
        session.check("loading the model")?;
        Ok(session)
    }

    /// Fails with the GPU errors reported since the last check, if any.
    fn check(&self, what: &str) -> Result<(), String> {
        let list = match self.errors.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => vec!["the GPU error log is poisoned".into()],
        };
        if list.is_empty() {
            Ok(())
        } else {
            Err(format!("GPU error while {what}: {}", list.join("; ")))
        }
    }

    /// The adapter (browsers may hide its name) and the optional features in use, e.g.
    /// "(name hidden) on BrowserWebGpu (Cpu) [f16: false, subgroups: false, timestamps: true]".
    pub fn adapter(&self) -> String {
        let gpu = &self.model.gpu;
        let name = if gpu.adapter.name.is_empty() { "(name hidden)" } else { gpu.adapter.name.as_str() };
        format!(
            "{name} on {:?} ({:?}) [f16: {}, subgroups: {}, timestamps: {}]",
            gpu.adapter.backend, gpu.adapter.device_type, gpu.caps.f16, gpu.caps.subgroups, gpu.caps.timestamps
        )
    }

    /// The model's name from the GGUF metadata.
    pub fn model_name(&self) -> &str {
        &self.model.name
    }

    /// Renders `messages_json` (`[{"role": "user", "content": "..."}, ...]`) with the model's chat template and
    /// returns the prompt ids.
    pub fn encode(&self, messages_json: &str) -> Result<Vec<u32>, String> {
        let messages: Vec<Message> = serde_json::from_str(messages_json)
            .map_err(|e| format!("messages must be a JSON array of {{\"role\", \"content\"}} objects: {e}"))?;
        if messages.is_empty() {
            return Err("messages must not be empty".into());
        }
        self.model.template.encode_prompt(&self.model.tokenizer, &messages).map_err(|e| format!("chat template: {e}"))
    }

    /// Greedy reply ids (without the end-of-turn token) to `messages_json`, at most `max_tokens` of them.
    pub async fn greedy(&mut self, messages_json: &str, max_tokens: usize) -> Result<Vec<u32>, String> {
        let prompt = self.encode(messages_json)?;
        let room = self.model.options.max_positions;
        if prompt.len() >= room {
            return Err(format!("the prompt has {} tokens; this engine holds {room} positions", prompt.len()));
        }
        let generation = self
            .model
            .generate(&prompt, max_tokens, &SamplingParams::greedy(), &mut |_, _, _| personascope_model::Flow::Continue)
            .await
            .map_err(|e| format!("generation: {e}"))?;
        self.check("generating")?;
        Ok(generation.ids)
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.model.tokenizer.decode(ids, true).map_err(|e| format!("decoding: {e}"))
    }
}

#[cfg(target_arch = "wasm32")]
mod bindings {
    use super::Session;
    use wasm_bindgen::prelude::*;

    fn js(msg: String) -> JsError {
        JsError::new(&msg)
    }

    /// Reports Rust panics (bugs) on the browser console instead of an opaque `unreachable` trap.
    #[wasm_bindgen(start)]
    fn start() {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("personascope-web panicked: {info}").into());
        }));
    }

    /// A model on the browser's WebGPU device.
    #[wasm_bindgen]
    pub struct Engine {
        session: Session,
    }

    #[wasm_bindgen]
    impl Engine {
        /// Requests the WebGPU adapter and loads a GGUF model from its bytes.
        pub async fn load(bytes: js_sys::Uint8Array) -> Result<Engine, JsError> {
            let bytes = bytes.to_vec();
            let session = Session::load(&bytes, personascope_gpu::wgpu::Backends::BROWSER_WEBGPU).await.map_err(js)?;
            Ok(Engine { session })
        }

        /// The adapter the model runs on and the optional features in use.
        pub fn adapter(&self) -> String {
            self.session.adapter()
        }

        /// The model's name.
        #[wasm_bindgen(js_name = modelName)]
        pub fn model_name(&self) -> String {
            self.session.model_name().to_string()
        }

        /// Prompt ids for `messages_json` (the chat template applied).
        pub fn encode(&self, messages_json: String) -> Result<Vec<u32>, JsError> {
            self.session.encode(&messages_json).map_err(js)
        }

        /// Greedy reply ids to `messages_json` (a JSON array of `{role, content}`), at most `max_tokens`.
        pub async fn greedy(&mut self, messages_json: String, max_tokens: u32) -> Result<Vec<u32>, JsError> {
            self.session.greedy(&messages_json, max_tokens as usize).await.map_err(js)
        }

        /// Text of `ids`.
        pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsError> {
            self.session.decode(&ids).map_err(js)
        }
    }
}
