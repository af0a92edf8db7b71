//! The model: configuration from GGUF metadata, tokenizer, chat template, the CPU reference forward pass with
//! residual-stream hooks, and generation.

pub mod chat;
mod error;
pub mod tokenizer;

pub use error::{ModelError, Result};
