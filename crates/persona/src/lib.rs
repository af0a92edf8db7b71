//! Persona vectors (Chen et al., 2025) for Personascope: extraction of trait vectors from contrasting system
//! prompts, evaluation (separation, steering sweep, recommended layer), calibrated monitoring, steering and
//! dataset screening, over either engine (the CPU reference or the GPU engine) through [`backend::Backend`].
//!
//! - [`traits`]: the JSON format of a trait definition, its validation ([`parse`]) and the extraction system prompt
//!   ([`TraitDefinition::system_prompt`]).
//! - [`library`]: the seven built-in traits of the paper (`evil`, `sycophantic`, `hallucinating`, `optimistic`,
//!   `impolite`, `apathetic`, `humorous`), embedded in the binary ([`builtin`], [`builtin_by_name`]).
//! - [`extract`], [`eval`], [`monitor`], [`steer`], [`screen`] and [`dataset`]: the methods, each describing its
//!   forward passes and generations as plans that the engines run in ragged batches.
//! - [`vector_file`]: llama.cpp control-vector GGUF files with Personascope's metadata.
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
pub mod files;
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
    MAX_INSTRUCTIONS, MAX_QUESTIONS, MAX_TEXT_BYTES, MAX_TRAIT_FILE_BYTES, MIN_EVALUATION_QUESTIONS,
    MIN_EXTRACTION_QUESTIONS, MIN_INSTRUCTIONS,
};
pub use vector_file::{from_gguf, to_gguf, Calibration, TraitVector, VectorFileError, VectorMeta};
