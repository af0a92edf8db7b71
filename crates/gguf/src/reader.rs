//! The GGUF reader: header, metadata, tensor table, and borrowed tensor data.

use crate::value::{Array, Strings, Value, ValueType};
use crate::{GgmlType, GgufError, DEFAULT_ALIGNMENT, MAGIC};
use std::collections::HashMap;

/// The most dimensions a GGML tensor has.
pub const GGML_MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF but no model uses more than one level; deeper nesting is refused so a hostile
/// file cannot recurse the reader into a stack overflow.
const MAX_ARRAY_DEPTH: usize = 2;
/// Largest accepted `general.alignment` (1 GiB): larger values only serve to make offsets overflow.
pub(crate) const MAX_ALIGNMENT: u64 = 1 << 30;

/// One entry of the tensor table, validated against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the contiguous (row) length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section, as stored.
    pub offset: u64,
    /// Absolute byte range of the data in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Gguf<'a> {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order ([`Gguf::metadata`]); private so that it cannot drift from `key_index`.
    metadata: Vec<(String, Value)>,
    /// Tensor table in file order ([`Gguf::tensors`]); private so that it cannot drift from `tensor_index`.
    tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    bytes: &'a [u8],
    /// Key -> index into `metadata`, and tensor name -> index into `tensors`: lookups by name are constant time
    /// (a model has hundreds of tensors and a hostile file may have millions).
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let n = n as usize; // fits: n <= remaining <= usize::MAX
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let start = self.pos as u64;
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| GgufError::BadUtf8 { what: what(), offset: start })
    }

    /// Refuses `count` items of at least `min_item_bytes` each unless they could fit in the remaining bytes;
    /// called before every allocation sized by a count from the file.
    fn check_count(&self, count: u64, min_item_bytes: u64, what: &dyn Fn() -> String) -> Result<(), GgufError> {
        let fits = count.checked_mul(min_item_bytes).is_some_and(|need| need <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(GgufError::CountTooLarge {
                what: what(),
                offset: self.pos as u64,
                count,
                min_item_bytes,
                available: self.remaining(),
            })
        }
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            // Any non-zero byte reads as true, as in llama.cpp; the writer only emits 0 and 1.
            ValueType::Bool => Value::Bool(self.array::<1>(&what)?[0] != 0),
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep { key: key.to_string(), depth: depth + 1 });
                }
                let type_id = self.u32(&|| format!("array element type of metadata key `{key}`"))?;
                let elem = ValueType::from_id(type_id)
                    .ok_or_else(|| GgufError::BadValueType { key: key.to_string(), type_id })?;
                // An array whose elements are arrays nests one level deeper even when it is empty; refuse it here
                // too, so that everything the reader accepts the writer can write back.
                if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep { key: key.to_string(), depth: depth + 2 });
                }
                let count_what = || format!("array length of metadata key `{key}`");
                let count = self.u64(&count_what)?;
                self.check_count(count, elem.min_bytes(), &count_what)?;
                Value::Array(self.array_of(key, elem, count as usize, depth)?)
            }
        })
    }
}

impl Cursor<'_> {
    /// `count` elements of type `elem` (already checked to fit the remaining bytes), into a typed vector.
    fn array_of(&mut self, key: &str, elem: ValueType, count: usize, depth: usize) -> Result<Array, GgufError> {
        let what = || format!("value of metadata key `{key}`");
        macro_rules! scalars {
            ($variant:ident, $t:ty, $n:literal) => {{
                let raw = self.take(count as u64 * $n, &what)?;
                Array::$variant(
                    raw.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n]))).collect(),
                )
            }};
        }
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(count as u64, &what)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(count as u64, &what)?.iter().map(|&b| b as i8).collect()),
            ValueType::Bool => Array::Bool(self.take(count as u64, &what)?.iter().map(|&b| b != 0).collect()),
            ValueType::U16 => scalars!(U16, u16, 2),
            ValueType::I16 => scalars!(I16, i16, 2),
            ValueType::U32 => scalars!(U32, u32, 4),
            ValueType::I32 => scalars!(I32, i32, 4),
            ValueType::F32 => scalars!(F32, f32, 4),
            ValueType::U64 => scalars!(U64, u64, 8),
            ValueType::I64 => scalars!(I64, i64, 8),
            ValueType::F64 => scalars!(F64, f64, 8),
            ValueType::String => {
                let mut strings = Strings::with_capacity(count);
                for _ in 0..count {
                    let start = self.pos as u64;
                    let len = self.u64(&what)?;
                    let raw = self.take(len, &what)?;
                    let s = std::str::from_utf8(raw).map_err(|_| GgufError::BadUtf8 { what: what(), offset: start })?;
                    strings.push(s);
                }
                Array::String(strings)
            }
            ValueType::Array => {
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    match self.value(key, ValueType::Array, depth + 1)? {
                        Value::Array(a) => items.push(a),
                        _ => return Err(GgufError::NestingTooDeep { key: key.to_string(), depth: depth + 1 }),
                    }
                }
                Array::Array(items)
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Parses the header, metadata and tensor table of a GGUF file held in `bytes`, and checks that every
    /// tensor's data lies inside the file. Tensor data is not copied.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c
            .take(4, &|| "magic".into())
            .map_err(|_| GgufError::BadMagic { found: bytes[..bytes.len().min(4)].to_vec() })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic.to_vec() });
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            if matches!(version.swap_bytes(), 2 | 3) {
                return Err(GgufError::BigEndian);
            }
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor entry at least
        // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        c.check_count(n_kv, 13, &|| "metadata count".into())?;
        c.check_count(n_tensors, 24, &|| "tensor count".into())?;

        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        let mut key_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let type_id = c.u32(&|| format!("value type of metadata key `{key}`"))?;
            let ty =
                ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType { key: key.clone(), type_id })?;
            let value = c.value(&key, ty, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                    key: "general.alignment".into(),
                    expected: "unsigned integer",
                    found: v.value_type().name(),
                })?;
                if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
        };

        struct RawTensor {
            name: String,
            dims: Vec<u64>,
            ty: GgmlType,
            offset: u64,
            n_bytes: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let n_dims = c.u32(&|| format!("dimension count of tensor `{name}`"))?;
            if n_dims as usize > GGML_MAX_DIMS {
                return Err(GgufError::TooManyDims { name, n_dims, max: GGML_MAX_DIMS });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
            }
            let type_id = c.u32(&|| format!("type of tensor `{name}`"))?;
            let ty = GgmlType::from_id(type_id)
                .ok_or_else(|| GgufError::UnknownTensorType { name: name.clone(), type_id })?;
            let offset = c.u64(&|| format!("offset of tensor `{name}`"))?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::ShapeOverflow { name: name.clone(), dims: dims.clone() })?;
            let row = dims.first().copied().unwrap_or(1);
            if row % ty.block_size() as u64 != 0 {
                return Err(GgufError::RowNotBlockMultiple { name, ty: ty.name(), row, block: ty.block_size() as u64 });
            }
            let n_bytes = ty
                .bytes_for(n_elements)
                .ok_or_else(|| GgufError::ShapeOverflow { name: name.clone(), dims: dims.clone() })?;
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor { name, offset, alignment });
            }
            if tensor_index.insert(name.clone(), raw.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            raw.push(RawTensor { name, dims, ty, offset, n_bytes });
        }

        let header_end = c.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for t in raw {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name: t.name,
                    dims: t.dims,
                    ty: t.ty,
                    offset: t.offset,
                    start: start as usize,
                    len: t.n_bytes as usize,
                }),
                _ => {
                    return Err(GgufError::TensorOutOfRange {
                        name: t.name,
                        start: data_offset.saturating_add(t.offset),
                        end: data_offset.saturating_add(t.offset).saturating_add(t.n_bytes),
                        file_len,
                    })
                }
            }
        }
        Ok(Gguf { version, alignment, metadata, tensors, data_offset, bytes, key_index, tensor_index })
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        // A hit is checked against the entry (the public vector may have been edited since parsing) and falls
        // back to a scan if it no longer matches.
        match self.key_index.get(key).map(|&i| self.metadata.get(i)) {
            None => None,
            Some(Some((k, v))) if k == key => Some(v),
            Some(_) => self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType { key: key.to_string(), expected, found: v.value_type().name() }
    }

    /// A required non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| Self::wrong(key, "non-negative integer", v))
    }

    /// A required number of any type.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| Self::wrong(key, "number", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        match v.as_array() {
            Some(Array::String(items)) => Ok(items.iter().collect()),
            _ => Err(Self::wrong(key, "array of strings", v)),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match self.tensor_index.get(name).map(|&i| self.tensors.get(i)) {
            None => None,
            Some(Some(t)) if t.name == name => Some(t),
            Some(_) => self.tensors.iter().find(|t| t.name == name),
        }
    }

    /// The stored bytes of a tensor (validated at parse time to lie inside the file).
    pub fn tensor_data(&self, t: &TensorInfo) -> &'a [u8] {
        &self.bytes[t.start..t.start + t.len]
    }

    /// A tensor dequantized to f32, in GGML order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name).ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let mut out = vec![0f32; t.n_elements() as usize];
        crate::dequantize(t.ty, self.tensor_data(t), &mut out)?;
        Ok(out)
    }
}
