//! Errors of the persona methods.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PersonaError {
    #[error(transparent)]
    Model(#[from] personascope_model::ModelError),
    #[error(transparent)]
    Gpu(#[from] personascope_gpu::GpuError),
    #[error(transparent)]
    Trait(#[from] crate::traits::TraitError),
    #[error(transparent)]
    VectorFile(#[from] crate::vector_file::VectorFileError),
    /// Arguments or data the method cannot use; the message says which and why.
    #[error("{0}")]
    Input(String),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = PersonaError> = std::result::Result<T, E>;
