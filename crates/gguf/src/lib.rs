//! GGUF files: a defensive reader over a byte slice, a writer, and CPU dequantization of the GGML tensor types.
//!
//! The reader never trusts the file: every count, length, offset and tensor size is checked against the bytes
//! that remain before anything is allocated, with overflow-checked arithmetic, and every error names the key or
//! tensor and the numbers involved. It reads from a `&[u8]` because in the browser the file arrives as an
//! `ArrayBuffer`; tensor data is borrowed from that slice, never copied.

mod error;
mod quant;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use quant::{dequantize, dot_f32, dot_row, QK_K};
pub use reader::{Gguf, TensorInfo, GGML_MAX_DIMS};
pub use types::GgmlType;
pub use value::{Array, Strings, Value, ValueType};
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
