//! Errors of the browser API: a stable [`ErrorCode`] for programs (`error.code` in JavaScript) beside a message
//! for people. Codes are part of the API: `web/personascope.d.ts` lists the same names (a test keeps them equal),
//! and a code is never renamed or reused for another kind of failure.

use personascope_gpu::GpuError;
use personascope_persona::error::PersonaError;

/// What kind of failure an API call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Arguments, options, messages or dataset text the engine cannot use (the message says which and why).
    InvalidInput,
    /// A trait definition that does not follow the format.
    InvalidTrait,
    /// A model file that cannot be loaded (not GGUF, an unsupported or broken model).
    InvalidModel,
    /// A control-vector file that cannot be read, or one made for another model.
    InvalidVector,
    /// A vector id that was never given out or was removed.
    UnknownVector,
    /// A conversation longer than the engine's context.
    TooLong,
    /// Stopped by the caller (an abort) before it finished.
    Cancelled,
    /// The GPU has too little memory, or a binding too small, for this model and these sizes.
    OutOfMemory,
    /// The GPU reported an error; the call's result cannot be trusted.
    GpuError,
    /// The GPU device was lost (driver reset, another tab, the GPU process restarted): reload to continue.
    DeviceLost,
    /// No usable WebGPU adapter or device.
    NoWebgpu,
    /// A bug in the engine.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order `personascope.d.ts` lists them.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidInput,
        ErrorCode::InvalidTrait,
        ErrorCode::InvalidModel,
        ErrorCode::InvalidVector,
        ErrorCode::UnknownVector,
        ErrorCode::TooLong,
        ErrorCode::Cancelled,
        ErrorCode::OutOfMemory,
        ErrorCode::GpuError,
        ErrorCode::DeviceLost,
        ErrorCode::NoWebgpu,
        ErrorCode::Internal,
    ];

    /// The name JavaScript sees.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::InvalidTrait => "invalid_trait",
            ErrorCode::InvalidModel => "invalid_model",
            ErrorCode::InvalidVector => "invalid_vector",
            ErrorCode::UnknownVector => "unknown_vector",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::GpuError => "gpu_error",
            ErrorCode::DeviceLost => "device_lost",
            ErrorCode::NoWebgpu => "no_webgpu",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A failed API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }

    /// The same error with `context: ` before its message.
    pub fn context(self, context: &str) -> Self {
        ApiError { code: self.code, message: format!("{context}: {}", self.message) }
    }

    /// Whether the message contains `s` (tests and callers that match on text).
    pub fn contains(&self, s: &str) -> bool {
        self.message.contains(s)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

impl std::error::Error for ApiError {}

/// A plain message is a rejected input: the session's own checks of what callers pass.
impl From<String> for ApiError {
    fn from(message: String) -> Self {
        ApiError::new(ErrorCode::InvalidInput, message)
    }
}

impl From<&str> for ApiError {
    fn from(message: &str) -> Self {
        ApiError::new(ErrorCode::InvalidInput, message)
    }
}

impl From<GpuError> for ApiError {
    fn from(e: GpuError) -> Self {
        let code = match &e {
            GpuError::DeviceLost(_) => ErrorCode::DeviceLost,
            GpuError::OutOfMemory { .. } | GpuError::AllocationFailed { .. } => ErrorCode::OutOfMemory,
            GpuError::NoAdapter(_) | GpuError::Device { .. } => ErrorCode::NoWebgpu,
            GpuError::Validation { .. } | GpuError::Readback { .. } | GpuError::Shader { .. } => ErrorCode::GpuError,
            GpuError::Unsupported(_) => ErrorCode::InvalidModel,
            GpuError::Model(_) => ErrorCode::InvalidInput,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<PersonaError> for ApiError {
    fn from(e: PersonaError) -> Self {
        match e {
            PersonaError::Gpu(g) => g.into(),
            PersonaError::Cancelled => ApiError::new(ErrorCode::Cancelled, "cancelled"),
            PersonaError::Trait(t) => ApiError::new(ErrorCode::InvalidTrait, t.to_string()),
            PersonaError::VectorFile(v) => ApiError::new(ErrorCode::InvalidVector, v.to_string()),
            PersonaError::Model(m) => ApiError::new(ErrorCode::InvalidInput, m.to_string()),
            PersonaError::Input(m) => ApiError::new(ErrorCode::InvalidInput, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_names() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate code names: {names:?}");
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')), "{names:?}");
    }

    #[test]
    fn a_lost_device_and_a_cancel_keep_their_codes_through_the_persona_layer() {
        let lost: ApiError = PersonaError::Gpu(GpuError::DeviceLost("Destroyed: gone".into())).into();
        assert_eq!(lost.code, ErrorCode::DeviceLost);
        assert!(lost.contains("Destroyed: gone"));
        assert_eq!(ApiError::from(PersonaError::Cancelled).code, ErrorCode::Cancelled);
        let oom: ApiError = GpuError::OutOfMemory { what: "x".into(), needed: 2, available: 1 }.into();
        assert_eq!(oom.context("loading the model").code, ErrorCode::OutOfMemory);
    }
}
