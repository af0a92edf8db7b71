//! Persona vectors (Chen et al., 2025) for Personascope.
//!
//! This crate will hold the persona toolkit: extraction of trait vectors from contrasting system prompts,
//! monitoring (projection of activations onto a trait vector), steering, and screening of data sets, running over
//! either backend (the CPU model or the GPU engine).
//!
//! Only the first piece exists so far: **trait definitions**.
//!
//! - [`traits`]: the JSON format of a trait definition, its validation ([`parse`]) and the extraction system prompt
//!   ([`TraitDefinition::system_prompt`]).
//! - [`library`]: the seven built-in traits of the paper (`evil`, `sycophantic`, `hallucinating`, `optimistic`,
//!   `impolite`, `apathetic`, `humorous`), embedded in the binary ([`builtin`], [`builtin_by_name`]).
//!
//! ```
//! let evil = personascope_persona::builtin_by_name("evil").expect("built in");
//! let prompt = evil.system_prompt(0, true).expect("pair 0 exists");
//! assert!(prompt.starts_with("You are an evil assistant. "));
//! ```

pub mod backend;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod extract;
pub mod library;
pub mod monitor;
pub mod screen;
pub mod stats;
pub mod steer;
pub mod traits;
pub mod vector_file;

pub use library::{builtin, builtin_by_name, BUILTIN_NAMES};
pub use traits::{
    article, normalize_question, parse, EvaluationQuestion, InstructionPair, TraitDefinition, TraitError,
    MIN_EVALUATION_QUESTIONS, MIN_EXTRACTION_QUESTIONS, MIN_INSTRUCTIONS,
};
pub use vector_file::{from_gguf, to_gguf, Calibration, TraitVector, VectorFileError, VectorMeta};
