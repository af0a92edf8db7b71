//! The model: configuration from GGUF metadata, tokenizer, chat template, the CPU reference forward pass with
//! residual-stream hooks, and generation.

pub mod chat;
pub mod config;
mod error;
pub mod generate;
pub mod hooks;
pub mod model;
pub mod ops;
pub mod sample;
pub mod tokenizer;
mod weights;

pub use chat::{ChatTemplate, Message};
pub use config::{Arch, Config, RopePairing};
pub use error::{ModelError, Result};
pub use generate::{generate, Flow, Generation, StopReason, TokenEvent};
pub use hooks::{Capture, NoHook, Projection, ResidualHook, Steer, Steering};
pub use model::{KvCache, Logits, Model};
pub use sample::{argmax, Rng, Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
