//! One module per kernel: its uniform layout, shape checks, and dispatch size. Each module's `variants()` lists
//! every define set the engine compiles its shader with; `all_variants` gathers them for the naga validation test.

use crate::shader::Defines;

pub mod accumulate;
pub mod add;
pub mod attention;
pub mod embed;
pub mod gather;
pub mod logprob;
pub mod matmul;
pub mod project;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod silu_gate;
pub mod steer;

/// (shader name, defines) for every variant the engine can compile.
pub fn all_variants() -> Vec<(&'static str, Defines)> {
    let mut v = Vec::new();
    v.extend(rms_norm::variants().into_iter().map(|d| ("rms_norm", d)));
    v.extend(rope::variants().into_iter().map(|d| ("rope", d)));
    v.extend(attention::variants().into_iter().map(|d| ("attention", d)));
    v.extend(silu_gate::variants().into_iter().map(|d| ("silu_gate", d)));
    v.extend(add::variants().into_iter().map(|d| ("add", d)));
    v.extend(matmul::variants().into_iter().map(|d| ("matmul", d)));
    v.extend(embed::variants().into_iter().map(|d| ("embed", d)));
    v.extend(sample::variants().into_iter().map(|d| ("sample", d)));
    v.extend(project::variants().into_iter().map(|d| ("project", d)));
    v.extend(steer::variants().into_iter().map(|d| ("steer", d)));
    v.extend(accumulate::variants().into_iter().map(|d| ("accumulate", d)));
    v.extend(gather::variants().into_iter().map(|d| ("gather", d)));
    v.extend(logprob::variants().into_iter().map(|d| ("logprob", d)));
    v
}
