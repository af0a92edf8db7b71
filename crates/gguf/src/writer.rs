//! The GGUF writer (version 3, little-endian). Used for test fixtures and for control-vector files.

use crate::reader::{GGML_MAX_DIMS, MAX_ALIGNMENT};
use crate::value::{Array, Value};
use crate::{GgmlType, GgufError, DEFAULT_ALIGNMENT, MAGIC};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes a complete file with [`GgufWriter::to_bytes`].
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    /// Tensor names so far, and key -> index into `metadata`: constant-time checks for files of many entries.
    names: std::collections::HashSet<String>,
    keys: std::collections::HashMap<String, usize>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata entry; file order is insertion order.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.keys.get(&key) {
            Some(&i) => self.metadata[i].1 = value,
            None => {
                self.keys.insert(key.clone(), self.metadata.len());
                self.metadata.push((key, value));
            }
        }
        self
    }

    /// Adds a tensor whose `data` holds its elements in GGML order, already encoded as `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        // Refuse what the reader would refuse, so that every file written can be read back.
        if dims.len() > GGML_MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims: dims.len() as u32, max: GGML_MAX_DIMS });
        }
        let row = dims.first().copied().unwrap_or(1);
        if row % ty.block_size() as u64 != 0 {
            return Err(GgufError::RowNotBlockMultiple { name, ty: ty.name(), row, block: ty.block_size() as u64 });
        }
        let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let needed = count.and_then(|n| ty.bytes_for(n));
        if needed != Some(data.len() as u64) {
            return Err(GgufError::DataSize {
                what: format!("tensor `{name}`"),
                ty: ty.name(),
                count: count.unwrap_or(u64::MAX),
                needed: needed.unwrap_or(u64::MAX),
                got: data.len() as u64,
            });
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor { name, dims: dims.to_vec(), ty, data });
        Ok(self)
    }

    /// Convenience for f32 tensors.
    pub fn add_f32(&mut self, name: impl Into<String>, dims: &[u64], values: &[f32]) -> Result<&mut Self, GgufError> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, data)
    }

    /// Serializes the file. Tensor data is laid out in insertion order, each aligned to `general.alignment`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let alignment = match self.keys.get("general.alignment").map(|&i| &self.metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            // Same limit as the reader: a larger alignment would pad the file to gigabytes (and on 32-bit targets
            // truncate to zero in the `as usize` below).
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                _ => {
                    return Err(GgufError::Writer(format!(
                        "general.alignment must be a power of two between 1 and 2^30, got {v:?}"
                    )))
                }
            },
        } as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            write_value(&mut out, key, value)?;
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(alignment) * alignment;
        }
        let data_start = out.len().div_ceil(alignment) * alignment;
        out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        Ok(out)
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<(), GgufError> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => write_array(out, key, a, 0)?,
    }
    Ok(())
}

fn write_array(out: &mut Vec<u8>, key: &str, a: &Array, depth: usize) -> Result<(), GgufError> {
    // The reader accepts one level of nesting (an array of arrays of scalars); refuse what it would refuse.
    if depth >= 1 && matches!(a, Array::Array(_)) {
        return Err(GgufError::NestingTooDeep { key: key.to_string(), depth: depth + 2 });
    }
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::Bool(v) => out.extend(v.iter().map(|&x| u8::from(x))),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::String(v) => {
            for s in v.iter() {
                write_str(out, s);
            }
        }
        Array::Array(v) => {
            for inner in v {
                write_array(out, key, inner, depth + 1)?;
            }
        }
    }
    Ok(())
}
