//! One module per kernel: its uniform layout, shape checks, and dispatch size.

pub mod rms_norm;
