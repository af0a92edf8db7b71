use personascope_gguf::GgufError;
use thiserror::Error;

/// Errors of the model crate. Each says what was wrong and where (key, tensor, token, template).
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture `{0}` (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence of {needed} tokens exceeds the context length {max}")]
    ContextFull { needed: usize, max: usize },
    #[error("hook: {0}")]
    Hook(String),
    #[error("sampling: {0}")]
    Sampling(String),
    #[error("{0}")]
    Io(String),
    #[error("{path}: {source}")]
    File { path: String, source: Box<ModelError> },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Prefixes the message with the file it came from.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        ModelError::File { path: path.display().to_string(), source: Box::new(self) }
    }
}
