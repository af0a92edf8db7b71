//! Running sums for response averages at one residual index, inside the forward call's compute pass: each entry of
//! one list of the lists buffer ([`crate::rows`]) is a run of consecutive rows of one sequence whose positions lie
//! in its mean range, added in order to that sequence's sum in the wave's results. The sums stay on the GPU across
//! the forward calls of a wave. Twin: [`crate::twins::accumulate`] (bit-identical). The uniform, binding and
//! dispatch are the gather's ([`super::gather::ListKernel`], built with `ListKernel::accumulate`).

use crate::shader::Defines;

pub use super::gather::{ListKernel as Accumulate, Params, WORKGROUP};

pub fn variants() -> Vec<Defines> {
    vec![super::gather::defines()]
}
