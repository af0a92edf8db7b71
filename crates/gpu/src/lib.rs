//! The GPU engine: hand-written WGSL kernels (in `shaders/`) on wgpu, natively (Vulkan, Metal, DX12) and in the
//! browser (WebGPU). Each kernel has a CPU twin in `personascope_model::ops` and a parity test.

mod context;
pub mod engine;
mod error;
pub mod kernel;
pub mod kernels;
pub mod profile;
pub mod quant;
pub mod rows;
pub mod shader;
pub mod twins;
mod wave;

pub use context::{AdapterChoice, Caps, Gpu};
pub use engine::{EngineOptions, GpuModel, StepOut};
pub use error::{GpuError, Result};
pub use kernel::Kernel;
pub use wgpu;
