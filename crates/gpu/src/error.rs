use thiserror::Error;

/// GPU engine errors; each says what failed and, where it applies, how much was needed and available.
#[derive(Debug, Error)]
pub enum GpuError {
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    #[error("could not open the GPU device on {adapter}: {msg}")]
    Device { adapter: String, msg: String },
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("not enough GPU memory: {what} needs {needed} bytes, the device allows {available}")]
    OutOfMemory { what: String, needed: u64, available: u64 },
    #[error("the GPU could not allocate the {needed} bytes this model needs ({msg}); try a smaller model or context")]
    AllocationFailed { needed: u64, msg: String },
    #[error("shader `{shader}`: {msg}")]
    Shader { shader: String, msg: String },
    #[error("GPU validation error in {what}: {msg}")]
    Validation { what: String, msg: String },
    #[error("reading back `{what}` failed: {msg}")]
    Readback { what: String, msg: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(#[from] personascope_model::ModelError),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;
