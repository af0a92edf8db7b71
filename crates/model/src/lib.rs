//! The model: configuration from GGUF metadata, tokenizer, chat template, the CPU reference forward pass with
//! residual-stream hooks, and generation.

pub mod chat;
pub mod config;
pub mod cpu;
pub mod engine;
mod error;
mod gemm;
pub mod generate;
pub mod hooks;
pub mod model;
pub mod ops;
pub mod plan;
pub mod reply;
pub mod sample;
pub mod schedule;
pub mod tokenizer;
mod weights;

pub use chat::{ChatTemplate, Message};
pub use config::{Arch, Config, RopePairing};
pub use cpu::CpuEngine;
pub use engine::{Engine, Limits, StepToken, Wave, WaveSeq};
pub use error::{ModelError, Result};
pub use generate::{generate, Flow, Generation, StopReason, TokenEvent};
pub use hooks::{NoHook, PlanHook, ResidualHook, Steering};
pub use model::{broken_logits, KvCache, Logits, Model};
pub use plan::{Layers, Plan, PlanOut, Span, Units};
pub use sample::{argmax, Rng, Sampler, SamplingParams};
pub use schedule::{generate_many, run_passes, GenOut, GenSpec, PassSpec, Passes};
pub use tokenizer::{TextStream, Tokenizer};
pub use weights::check_tensors;
