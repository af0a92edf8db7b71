use thiserror::Error;

/// Everything that can be wrong with a GGUF file. Each variant carries what was being read and the numbers.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GgufError {
    #[error("not a GGUF file: the first four bytes are {found:?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("GGUF version {0} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("file truncated while reading {what} at byte {offset}: needs {needed} bytes, {available} remain")]
    Truncated { what: String, offset: u64, needed: u64, available: u64 },
    #[error("{what} at byte {offset} claims {count} items of at least {min_item_bytes} bytes each, but only {available} bytes remain")]
    CountTooLarge { what: String, offset: u64, count: u64, min_item_bytes: u64, available: u64 },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    BadUtf8 { what: String, offset: u64 },
    #[error("metadata key `{key}` has unknown value type {type_id}")]
    BadValueType { key: String, type_id: u32 },
    #[error("metadata key `{key}`: arrays nested {depth} deep are not supported")]
    NestingTooDeep { key: String, depth: usize },
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("`general.alignment` = {0} is not a power of two between 1 and 2^30")]
    BadAlignment(u64),
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),
    #[error("tensor `{name}` has {n_dims} dimensions; at most {max} are supported")]
    TooManyDims { name: String, n_dims: u32, max: usize },
    #[error("tensor `{name}` has unknown or unsupported type id {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("tensor `{name}` shape {dims:?} has too many elements (overflow)")]
    ShapeOverflow { name: String, dims: Vec<u64> },
    #[error("tensor `{name}` of type {ty}: row length {row} is not a multiple of the block size {block}")]
    RowNotBlockMultiple { name: String, ty: &'static str, row: u64, block: u64 },
    #[error("tensor `{name}` offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { name: String, offset: u64, alignment: u64 },
    #[error("tensor `{name}` data [{start}, {end}) lies outside the file's {file_len} bytes")]
    TensorOutOfRange { name: String, start: u64, end: u64, file_len: u64 },
    #[error("tensor `{0}` not found")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("{what}: {count} elements of {ty} need {needed} bytes, got {got}")]
    DataSize { what: String, ty: &'static str, count: u64, needed: u64, got: u64 },
    #[error("writer: {0}")]
    Writer(String),
}
