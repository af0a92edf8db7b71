//! One module per kernel: its uniform layout, shape checks, and dispatch size. Each module's `variants()` lists
//! every define set the engine compiles its shader with; `all_variants` gathers them for the naga validation test.

use crate::shader::Defines;

pub mod rms_norm;

/// (shader name, defines) for every variant the engine can compile.
pub fn all_variants() -> Vec<(&'static str, Defines)> {
    let mut v = Vec::new();
    v.extend(rms_norm::variants().into_iter().map(|d| ("rms_norm", d)));
    v
}
