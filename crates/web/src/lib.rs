//! Personascope in the browser: the wasm-bindgen API the page's Web Worker calls. The target-independent core
//! ([`session::Session`]) also builds natively, so the workspace tests it on lavapipe; the JavaScript bindings
//! exist on wasm32 only and are a thin layer: JSON strings in and out, of the shapes in [`api`] (from which
//! `web/personascope-api.d.ts` is generated).
//!
//! Nothing reachable from JavaScript panics on purpose: every failure comes back as a JavaScript `Error` (a
//! rejected promise) with a message saying what failed and a stable `code` ([`ErrorCode`]) saying what kind of
//! failure it was.

pub mod api;
pub mod error;
pub mod session;

pub use error::{ApiError, ErrorCode};
pub use session::{Session, MAX_POSITIONS};

#[cfg(target_arch = "wasm32")]
mod bindings {
    use super::session::{self, Session};
    use super::ApiError;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use wasm_bindgen::prelude::*;

    /// A JavaScript `Error` with the message and a `code` property.
    fn js(e: ApiError) -> JsValue {
        let err = js_sys::Error::new(&e.message);
        // Setting a property on a fresh Error object cannot fail; if it did, the message alone still goes out.
        let _ = js_sys::Reflect::set(&err, &JsValue::from_str("code"), &JsValue::from_str(e.code.as_str()));
        err.into()
    }

    /// Reports Rust panics (bugs) on the browser console instead of an opaque `unreachable` trap.
    #[wasm_bindgen(start)]
    fn start() {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("personascope-web panicked: {info}").into());
        }));
    }

    /// Calls a JS callback with a JSON string; a throwing callback does not stop the Rust side.
    fn emit(f: &js_sys::Function, v: serde_json::Value) {
        let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&v.to_string()));
    }

    /// Stops the running chat, extraction, evaluation or screening of its engine. A separate object so it can be
    /// used while the engine is busy (wasm-bindgen refuses a second call into an object that is borrowed).
    #[wasm_bindgen]
    pub struct AbortHandle {
        flag: Arc<AtomicBool>,
    }

    #[wasm_bindgen]
    impl AbortHandle {
        pub fn abort(&self) {
            self.flag.store(true, Ordering::SeqCst);
        }
    }

    /// The built-in trait definitions (JSON array).
    #[wasm_bindgen(js_name = builtinTraits)]
    pub fn builtin_traits() -> String {
        session::builtin_traits().to_string()
    }

    /// CSV text of `rows_json` (`[[field, ...], ...]`) under `header_json` (`[name, ...]`), formula-injection safe.
    #[wasm_bindgen]
    pub fn csv(header_json: String, rows_json: String) -> Result<String, JsValue> {
        Session::csv(&header_json, &rows_json).map_err(js)
    }

    /// A model on the browser's WebGPU device, with the page's trait vectors and settings.
    #[wasm_bindgen]
    pub struct Engine {
        session: Session,
    }

    #[wasm_bindgen]
    impl Engine {
        /// Requests the WebGPU adapter and loads a GGUF model from its bytes; `on_progress(done, total)`, if
        /// given, follows the upload of the weights.
        pub async fn load(bytes: js_sys::Uint8Array, on_progress: Option<js_sys::Function>) -> Result<Engine, JsValue> {
            let bytes = bytes.to_vec();
            let mut progress = |done: usize, total: usize| {
                if let Some(f) = &on_progress {
                    // A throwing callback must not stop the load.
                    let _ = f.call2(&JsValue::NULL, &JsValue::from(done as u32), &JsValue::from(total as u32));
                }
            };
            let session = Session::load(&bytes, personascope_gpu::wgpu::Backends::BROWSER_WEBGPU, &mut progress)
                .await
                .map_err(js)?;
            Ok(Engine { session })
        }

        #[wasm_bindgen(js_name = abortHandle)]
        pub fn abort_handle(&self) -> AbortHandle {
            AbortHandle { flag: self.session.abort_flag() }
        }

        /// The adapter the model runs on and the optional features in use.
        pub fn adapter(&self) -> String {
            self.session.adapter()
        }

        #[wasm_bindgen(js_name = modelName)]
        pub fn model_name(&self) -> String {
            self.session.model_name().to_string()
        }

        /// Why the GPU device was lost, or undefined while it works. After a loss every call fails with code
        /// `device_lost`; only a new device (reloading the page) brings the engine back.
        #[wasm_bindgen(js_name = deviceLost)]
        pub fn device_lost(&self) -> Option<String> {
            self.session.device_lost()
        }

        /// Destroys the GPU device as a driver reset would (for testing a page's recovery path).
        #[wasm_bindgen(js_name = loseDevice)]
        pub fn lose_device(&self) {
            self.session.lose_device()
        }

        /// Model and device facts (JSON).
        pub fn info(&self) -> String {
            self.session.info().to_string()
        }

        /// Prompt ids for `messages_json` (the chat template applied).
        pub fn encode(&self, messages_json: String) -> Result<Vec<u32>, JsValue> {
            self.session.encode(&messages_json).map_err(|e| js(self.session.seal(e)))
        }

        /// Greedy reply ids to `messages_json`, at most `max_tokens`, unsteered and unmonitored.
        pub async fn greedy(&mut self, messages_json: String, max_tokens: u32) -> Result<Vec<u32>, JsValue> {
            self.session.greedy(&messages_json, max_tokens as usize).await.map_err(|e| js(self.session.seal(e)))
        }

        pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsValue> {
            self.session.decode(&ids).map_err(|e| js(self.session.seal(e)))
        }

        /// A streamed reply (JSON) with the current steering and monitoring; `on_token` gets one JSON string per
        /// token.
        pub async fn chat(
            &mut self,
            messages_json: String,
            options_json: String,
            on_token: js_sys::Function,
        ) -> Result<String, JsValue> {
            let out = self
                .session
                .chat(&messages_json, &options_json, &mut |v| emit(&on_token, v))
                .await
                .map_err(|e| js(self.session.seal(e)))?;
            Ok(out.to_string())
        }

        #[wasm_bindgen(js_name = setSteering)]
        pub fn set_steering(&mut self, json: String) -> Result<(), JsValue> {
            self.session.set_steering(&json).map_err(|e| js(self.session.seal(e)))
        }

        #[wasm_bindgen(js_name = setMonitor)]
        pub fn set_monitor(&mut self, json: String) -> Result<(), JsValue> {
            self.session.set_monitor(&json).map_err(|e| js(self.session.seal(e)))
        }

        /// Imports a control-vector GGUF; returns its info (JSON, with its id).
        #[wasm_bindgen(js_name = importVector)]
        pub fn import_vector(&mut self, bytes: js_sys::Uint8Array, file_name: String) -> Result<String, JsValue> {
            Ok(self
                .session
                .import_vector(&bytes.to_vec(), &file_name)
                .map_err(|e| js(self.session.seal(e)))?
                .to_string())
        }

        #[wasm_bindgen(js_name = exportVector)]
        pub fn export_vector(&self, id: u32) -> Result<Vec<u8>, JsValue> {
            self.session.export_vector(id as usize).map_err(|e| js(self.session.seal(e)))
        }

        #[wasm_bindgen(js_name = removeVector)]
        pub fn remove_vector(&mut self, id: u32) -> Result<(), JsValue> {
            self.session.remove_vector(id as usize).map_err(|e| js(self.session.seal(e)))
        }

        /// Info of every loaded vector (JSON array).
        pub fn vectors(&self) -> String {
            self.session.vectors().to_string()
        }

        pub async fn extract(
            &mut self,
            trait_json: String,
            options_json: String,
            on_progress: js_sys::Function,
        ) -> Result<String, JsValue> {
            let out = self
                .session
                .extract(&trait_json, &options_json, &mut |v| emit(&on_progress, v))
                .await
                .map_err(|e| js(self.session.seal(e)))?;
            Ok(out.to_string())
        }

        pub async fn evaluate(
            &mut self,
            trait_json: String,
            vector: u32,
            options_json: String,
            on_progress: js_sys::Function,
        ) -> Result<String, JsValue> {
            let out = self
                .session
                .evaluate(&trait_json, vector as usize, &options_json, &mut |v| emit(&on_progress, v))
                .await
                .map_err(|e| js(self.session.seal(e)))?;
            Ok(out.to_string())
        }

        pub async fn screen(
            &mut self,
            vector: u32,
            jsonl: Vec<u8>,
            options_json: String,
            on_progress: js_sys::Function,
        ) -> Result<String, JsValue> {
            let out = self
                .session
                .screen(vector as usize, &jsonl, &options_json, &mut |v| emit(&on_progress, v))
                .await
                .map_err(|e| js(self.session.seal(e)))?;
            Ok(out.to_string())
        }

        /// The original lines of the last screened dataset with the given line numbers (JSON array), as JSONL.
        #[wasm_bindgen(js_name = exportSamples)]
        pub fn export_samples(&self, lines_json: String) -> Result<String, JsValue> {
            self.session.export_samples(&lines_json).map_err(|e| js(self.session.seal(e)))
        }
    }
}
