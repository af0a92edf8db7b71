//! Trait-vector files: bit-exact round trips, llama.cpp compatibility of what is written, import of plain
//! control vectors from other tools, and one test per kind of bad file or mismatched model.

use std::collections::BTreeMap;

use personascope_gguf::{Array, GgmlType, Gguf, GgufWriter, Value};
use personascope_persona::vector_file::{
    from_gguf, load, save, to_gguf, Calibration, TraitVector, VectorFileError, VectorMeta, FORMAT_VERSION,
    QUANTILE_COUNT,
};

const FILE: &str = "test-vector.gguf";

/// Deterministic values with awkward bit patterns: signs, tiny and large magnitudes, negative zero, subnormals.
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match i % 11 {
                3 => -0.0,
                7 => f32::from_bits(1 + (state as u32 & 0xFF)), // subnormal
                _ => ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 10f32.powi((i % 5) as i32 - 2),
            }
        })
        .collect()
}

fn calibration(n: usize) -> Calibration {
    Calibration {
        token_mean: values(100, n + 1),
        token_std: values(101, n + 1).iter().map(|x| x.abs() + 0.5).collect(),
        token_quantiles: (0..=n)
            .map(|l| {
                let mut q = values(200 + l as u64, QUANTILE_COUNT);
                q.sort_by(f32::total_cmp);
                q
            })
            .collect(),
        response_mean: values(102, n + 1),
        response_std: values(103, n + 1).iter().map(|x| x.abs()).collect(),
        difference_mean: values(104, n + 1),
        difference_std: values(105, n + 1).iter().map(|x| x.abs()).collect(),
        samples: 321,
    }
}

/// A fully described vector for a model of `n` blocks and width `d`, every row present.
fn full_vector(n: usize, d: usize) -> TraitVector {
    let mut extra = BTreeMap::new();
    extra.insert("filter".to_string(), "coherence >= 50".to_string());
    extra.insert("source".to_string(), "unit test, ünïcode ✓".to_string());
    TraitVector {
        rows: (0..=n).map(|l| values(l as u64, d)).collect(),
        present: vec![true; n + 1],
        meta: VectorMeta {
            model_hint: "llama".into(),
            model_name: Some("SmolLM2 135M Instruct".into()),
            n_layers: n,
            d_model: d,
            n_layers_inferred: false,
            trait_name: Some("evil".into()),
            description: Some("actively seeks to harm".into()),
            mode: Some("response".into()),
            layer: Some(n / 2),
            alpha: Some(1.75),
            screen_layer: Some(n - 1),
            counts: Some([140, 137]),
            calibration: Some(calibration(n)),
            extra,
        },
    }
}

fn bits(rows: &[Vec<f32>]) -> Vec<Vec<u32>> {
    rows.iter().map(|r| r.iter().map(|x| x.to_bits()).collect()).collect()
}

fn calibration_bits(c: &Calibration) -> Vec<Vec<u32>> {
    let mut all = vec![
        c.token_mean.clone(),
        c.token_std.clone(),
        c.response_mean.clone(),
        c.response_std.clone(),
        c.difference_mean.clone(),
        c.difference_std.clone(),
    ];
    all.extend(c.token_quantiles.iter().cloned());
    bits(&all)
}

fn assert_same(a: &TraitVector, b: &TraitVector) {
    assert_eq!(bits(&a.rows), bits(&b.rows), "rows differ");
    assert_eq!(a.present, b.present);
    assert_eq!(a.meta, b.meta);
    let (ca, cb) = (a.meta.calibration.as_ref(), b.meta.calibration.as_ref());
    assert_eq!(ca.map(calibration_bits), cb.map(calibration_bits), "calibration differs");
    assert_eq!(a.meta.alpha.map(f32::to_bits), b.meta.alpha.map(f32::to_bits));
}

/// A GGUF file taken apart so that a test can change it and write it back.
struct Parts {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Parts {
    fn of(bytes: &[u8]) -> Parts {
        let g = Gguf::parse(bytes).expect("valid file");
        let tensors =
            g.tensors().iter().map(|t| (t.name.clone(), t.dims.clone(), t.ty, g.tensor_data(t).to_vec())).collect();
        Parts { metadata: g.metadata().to_vec(), tensors }
    }

    fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    fn remove(&mut self, key: &str) -> &mut Self {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_eq!(self.metadata.len() + 1, before, "{key} was not in the file");
        self
    }

    fn add_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((name.to_string(), dims.to_vec(), GgmlType::F32, data));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.metadata {
            w.set(k.clone(), v.clone());
        }
        for (name, dims, ty, data) in &self.tensors {
            w.add_tensor(name.clone(), dims, *ty, data.clone()).expect("tensor");
        }
        w.to_bytes().expect("writes")
    }
}

/// The file header llama.cpp's cvector-generator writes (layer_count as i32), without tensors.
fn llama_cpp_header(layer_count: i32) -> Parts {
    let mut p = Parts { metadata: Vec::new(), tensors: Vec::new() };
    p.set("general.architecture", Value::String("controlvector".into()));
    p.set("controlvector.model_hint", Value::String("llama".into()));
    p.set("controlvector.layer_count", Value::I32(layer_count));
    p
}

fn import_err(bytes: &[u8]) -> VectorFileError {
    match from_gguf(bytes, FILE) {
        Ok(v) => panic!("expected an error, imported {:?}", v.meta),
        Err(e) => {
            assert!(e.to_string().contains(FILE), "the message must name the file: {e}");
            e
        }
    }
}

fn f32_array(values: &[f32]) -> Value {
    Value::Array(Array::F32(values.to_vec()))
}

#[test]
fn round_trip_is_bit_identical() {
    for (n, d) in [(5, 24), (1, 3), (2, 7), (30, 64)] {
        let v = full_vector(n, d);
        let back = from_gguf(&to_gguf(&v).expect("exports"), FILE).expect("imports");
        assert_same(&v, &back);
    }
}

#[test]
fn optional_metadata_and_absent_rows_round_trip() {
    let (n, d) = (6, 8);
    let mut v = full_vector(n, d);
    v.meta = VectorMeta { model_hint: "qwen2".into(), n_layers: n, d_model: d, ..VectorMeta::default() };
    for l in [0, 3, 6] {
        v.present[l] = false;
        v.rows[l] = vec![0.0; d];
    }
    let bytes = to_gguf(&v).expect("exports");
    let g = Gguf::parse(&bytes).expect("parses");
    assert!(g.get("personascope.row.0").is_none(), "absent row 0 must not be written");
    assert!(g.get("personascope.row.1").is_some());
    assert!(g.tensor("direction.2").is_none() && g.tensor("direction.5").is_none());
    assert!(g.get("personascope.mode").is_none() && g.get("personascope.calibration.samples").is_none());
    let back = from_gguf(&bytes, FILE).expect("imports");
    assert_same(&v, &back);
    assert_eq!(back.row(3), None);
    assert_eq!(back.row(4).map(<[f32]>::len), Some(d));
    assert_eq!(back.row(7), None);
}

#[test]
fn exported_file_is_a_llama_cpp_control_vector() {
    let (n, d) = (5, 16);
    let v = full_vector(n, d);
    let bytes = to_gguf(&v).expect("exports");
    let g = Gguf::parse(&bytes).expect("parses");
    assert_eq!(g.get("general.architecture"), Some(&Value::String("controlvector".into())));
    assert_eq!(g.get("controlvector.model_hint"), Some(&Value::String("llama".into())));
    assert_eq!(g.get("controlvector.layer_count"), Some(&Value::U32(n as u32)));
    assert_eq!(g.get("personascope.format_version"), Some(&Value::U32(FORMAT_VERSION)));
    assert!(g.get_str("personascope.layer_numbering").expect("documented").contains("direction.k"));

    // llama.cpp refuses the whole file if any tensor is direction.0, not F32, not 1-D, or of another length.
    assert!(g.tensor("direction.0").is_none());
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<String> = (1..n).map(|k| format!("direction.{k}")).collect();
    assert_eq!(names, expected);
    for k in 1..n {
        let t = g.tensor(&format!("direction.{k}")).expect("present");
        assert_eq!((t.ty, t.dims.as_slice()), (GgmlType::F32, [d as u64].as_slice()));
        // direction.k is added after block k, our residual index k + 1.
        let stored = g.tensor_f32(&t.name).expect("reads");
        assert_eq!(bits(&[stored]), bits(&v.rows[k + 1..k + 2]));
    }
    for l in 0..2 {
        let stored = g.get(&format!("personascope.row.{l}")).and_then(Value::as_array).expect("row array");
        let stored: Vec<f32> = stored.values().map(|x| x.as_f64().expect("number") as f32).collect();
        assert_eq!(bits(&[stored]), bits(&v.rows[l..l + 1]));
    }
}

#[test]
fn reexport_of_an_imported_file_gives_identical_bytes() {
    let mut v = full_vector(4, 10);
    v.present[2] = false;
    v.rows[2] = vec![0.0; 10];
    let first = to_gguf(&v).expect("exports");
    let second = to_gguf(&from_gguf(&first, FILE).expect("imports")).expect("re-exports");
    assert_eq!(first, second);
}

#[test]
fn llama_cpp_file_imports_at_residual_index_plus_one() {
    // cvector-generator for a 4-block model: direction.1..=3, layer_count = number of tensors = 3, as i32.
    let d = 6;
    let mut p = llama_cpp_header(3);
    for k in 1..=3u64 {
        p.add_f32(&format!("direction.{k}"), &[d as u64], &values(50 + k, d));
    }
    let v = from_gguf(&p.bytes(), FILE).expect("imports");
    assert_eq!((v.meta.n_layers, v.meta.d_model), (4, d));
    assert!(v.meta.n_layers_inferred);
    assert_eq!(v.meta.mode.as_deref(), Some("imported"));
    assert_eq!(v.meta.model_hint, "llama");
    assert_eq!((v.meta.model_name.as_ref(), v.meta.calibration.as_ref()), (None, None));
    assert_eq!(v.present, [false, false, true, true, true]);
    for k in 1..=3u64 {
        assert_eq!(bits(&[v.row(k as usize + 1).expect("present").to_vec()]), bits(&[values(50 + k, d)]));
    }
    assert_eq!(bits(&v.rows[..2]), bits(&[vec![0.0; d], vec![0.0; d]]));
    v.check_model("llama", Some("any name"), 4, d).expect("fits a 4-block model");

    // The depth of a foreign file is only a lower bound: for_model pads it to the model's.
    let err = v.check_model("llama", None, 12, d).expect_err("depth differs");
    assert!(err.to_string().contains("for_model"), "{err}");
    let padded = v.clone().for_model("llama", None, 12, d).expect("pads");
    assert_eq!((padded.rows.len(), padded.present.len(), padded.meta.n_layers), (13, 13, 12));
    assert!(!padded.meta.n_layers_inferred);
    assert_eq!(bits(&padded.rows[..5]), bits(&v.rows));
    assert!(padded.present[5..].iter().all(|p| !p));
    assert!(v.clone().for_model("llama", None, 3, d).is_err(), "a direction beyond the model's depth");

    // Exported again, it keeps the flag and the rows.
    let again = from_gguf(&to_gguf(&v).expect("exports"), FILE).expect("imports");
    assert_same(&v, &again);
}

#[test]
fn foreign_depth_is_inferred_without_layer_count() {
    // A repeng-style subset: layer_count (u32) counts tensors, the highest index says more.
    let d = 4;
    let mut p = llama_cpp_header(2);
    p.set("controlvector.layer_count", Value::U32(2));
    p.add_f32("direction.9", &[d], &values(9, 4)).add_f32("direction.5", &[d], &values(5, 4));
    let v = from_gguf(&p.bytes(), FILE).expect("imports");
    assert_eq!(v.meta.n_layers, 10);
    assert_eq!(v.present.iter().filter(|&&x| x).count(), 2);
    assert!(v.present[6] && v.present[10]);

    p.remove("controlvector.layer_count");
    let v = from_gguf(&p.bytes(), FILE).expect("imports without layer_count");
    assert_eq!(v.meta.n_layers, 10);
}

#[test]
fn direction_zero_is_residual_index_one() {
    let d = 5;
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.0", &[d], &values(0, 5)).add_f32("direction.2", &[d], &values(2, 5));
    let v = from_gguf(&p.bytes(), FILE).expect("direction.0 is accepted");
    assert_eq!(v.present, [false, true, false, true]);
    assert_eq!(bits(&v.rows[1..2]), bits(&[values(0, 5)]));
    // Re-exported, row 1 moves to metadata, so llama.cpp accepts the file.
    let bytes = to_gguf(&v).expect("exports");
    let g = Gguf::parse(&bytes).expect("parses");
    assert!(g.tensor("direction.0").is_none());
    assert!(g.get("personascope.row.1").is_some());
    assert_same(&v, &from_gguf(&bytes, FILE).expect("imports"));

    // In a Personascope file, direction.0 and personascope.row.1 would be the same row.
    let mut ours = Parts::of(&to_gguf(&full_vector(3, 5)).expect("exports"));
    ours.add_f32("direction.0", &[5], &values(0, 5));
    let e = import_err(&ours.bytes());
    assert!(matches!(e, VectorFileError::DuplicateRow { row: 1, .. }), "{e}");
}

#[test]
fn a_model_file_is_not_a_vector() {
    let mut p = llama_cpp_header(3);
    p.set("general.architecture", Value::String("llama".into())).add_f32("direction.1", &[4], &[1.0; 4]);
    let e = import_err(&p.bytes());
    assert!(matches!(e, VectorFileError::NotControlVector { .. }), "{e}");
    assert!(e.to_string().contains("\"llama\""), "{e}");

    p.remove("general.architecture");
    let e = import_err(&p.bytes());
    assert!(matches!(e, VectorFileError::NotControlVector { .. }), "{e}");

    p.set("general.architecture", Value::U32(1));
    assert!(matches!(import_err(&p.bytes()), VectorFileError::WrongType { .. }));
}

#[test]
fn not_gguf_or_truncated() {
    let e = import_err(b"not a gguf file at all");
    assert!(matches!(e, VectorFileError::Gguf { .. }), "{e}");
    let bytes = to_gguf(&full_vector(4, 8)).expect("exports");
    for cut in [bytes.len() - 1, bytes.len() / 2, 30, 3, 0] {
        let e = import_err(&bytes[..cut]);
        assert!(matches!(e, VectorFileError::Gguf { .. }), "cut at {cut}: {e}");
    }
}

#[test]
fn bad_tensor_names() {
    for name in ["token_embd.weight", "direction.", "direction.x", "direction.01", "direction.+1", "direction.1.a"] {
        let mut p = llama_cpp_header(3);
        p.add_f32("direction.1", &[4], &[1.0; 4]).add_f32(name, &[4], &[1.0; 4]);
        let e = import_err(&p.bytes());
        assert!(matches!(&e, VectorFileError::BadTensorName { name: n, .. } if n == name), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn non_f32_and_non_1d_tensors() {
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.1", &[4], &[1.0; 4]);
    p.tensors.push(("direction.2".into(), vec![4], GgmlType::F16, vec![0; 8]));
    let e = import_err(&p.bytes());
    assert!(matches!(&e, VectorFileError::BadTensor { name, .. } if name == "direction.2"), "{e}");
    assert!(e.to_string().contains("F16"), "{e}");

    let mut p = llama_cpp_header(3);
    p.add_f32("direction.1", &[4], &[1.0; 4]).add_f32("direction.2", &[4, 2], &[1.0; 8]);
    let e = import_err(&p.bytes());
    assert!(matches!(&e, VectorFileError::BadTensor { name, .. } if name == "direction.2"), "{e}");
    assert!(e.to_string().contains("1-D"), "{e}");
}

#[test]
fn inconsistent_lengths() {
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.1", &[4], &[1.0; 4]).add_f32("direction.2", &[5], &[1.0; 5]);
    let e = import_err(&p.bytes());
    assert!(matches!(e, VectorFileError::LengthMismatch { found: 5, expected: 4, .. }), "{e}");
    assert!(e.to_string().contains("direction.2"), "{e}");

    // In a Personascope file, d_model rules, and rows 0/1 must agree with it too.
    let bytes = to_gguf(&full_vector(3, 4)).expect("exports");
    let mut p = Parts::of(&bytes);
    p.set("personascope.row.0", f32_array(&[1.0; 3]));
    let e = import_err(&p.bytes());
    assert!(matches!(e, VectorFileError::LengthMismatch { found: 3, expected: 4, .. }), "{e}");
    assert!(e.to_string().contains("personascope.row.0"), "{e}");
    let mut p = Parts::of(&bytes);
    p.set("personascope.d_model", Value::U32(5));
    assert!(matches!(import_err(&p.bytes()), VectorFileError::LengthMismatch { expected: 5, .. }));
}

#[test]
fn index_beyond_layer_count() {
    let mut p = Parts::of(&to_gguf(&full_vector(3, 4)).expect("exports"));
    // Residual index 4 exists in a 3-block model only up to 3: direction.3 would be after the last block.
    p.add_f32("direction.3", &[4], &[1.0; 4]);
    let e = import_err(&p.bytes());
    assert!(
        matches!(&e, VectorFileError::IndexOutOfRange { index: 4, n_layers: 3, name, .. } if name == "direction.3")
    );
}

#[test]
fn hostile_sizes_are_refused_before_allocating() {
    let mut p = llama_cpp_header(i32::MAX);
    p.add_f32("direction.1", &[4], &[1.0; 4]);
    assert!(matches!(import_err(&p.bytes()), VectorFileError::TooLarge { .. }));
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.18446744073709551615", &[4], &[1.0; 4]);
    assert!(matches!(import_err(&p.bytes()), VectorFileError::TooLarge { .. }));
    let mut p = Parts::of(&to_gguf(&full_vector(3, 4)).expect("exports"));
    p.set("personascope.d_model", Value::U64(1 << 40));
    assert!(matches!(import_err(&p.bytes()), VectorFileError::TooLarge { .. }));
}

#[test]
fn bad_metadata() {
    let bytes = to_gguf(&full_vector(3, 4)).expect("exports");
    let mut unsorted = vec![0.0; 21 * 4];
    unsorted[30] = -1.0;
    // (key, new value or None to remove it, text the error must contain)
    let edits: Vec<(&str, Option<Value>, &str)> = vec![
        ("personascope.format_version", Some(Value::U32(2)), "format_version 2"),
        ("controlvector.model_hint", None, "`controlvector.model_hint` is missing"),
        ("controlvector.layer_count", None, "`controlvector.layer_count` is missing"),
        ("controlvector.layer_count", Some(Value::U32(0)), "`controlvector.layer_count`: is 0"),
        ("personascope.d_model", None, "`personascope.d_model` is missing"),
        ("personascope.trait", Some(Value::U32(3)), "`personascope.trait` has type u32"),
        ("personascope.layer", Some(Value::U32(4)), "`personascope.layer`: residual index 4"),
        ("personascope.count_neg", None, "`personascope.count_neg` is missing"),
        ("personascope.count_pos", Some(Value::U64(1 << 33)), "`personascope.count_pos`: 8589934592"),
        ("personascope.colour", Some(Value::U32(1)), "`personascope.colour` is not part of"),
        ("personascope.note.x", Some(Value::U32(1)), "`personascope.note.x` has type u32"),
        ("personascope.row.1", Some(Value::F32(1.0)), "`personascope.row.1` has type f32"),
        ("personascope.row.1", Some(Value::Array(Array::F64(vec![1.0; 4]))), "array of f64"),
        ("personascope.row.0", Some(f32_array(&[0.0, f32::NAN, 0.0, 0.0])), "`personascope.row.0`: value 1"),
        ("personascope.alpha", Some(Value::F32(f32::INFINITY)), "`personascope.alpha`: inf"),
        ("personascope.calibration.token_mean", Some(f32_array(&[0.0; 5])), "token_mean`: 5 values"),
        ("personascope.calibration.token_quantiles", Some(f32_array(&[0.0; 83])), "token_quantiles`: 83 values"),
        ("personascope.calibration.token_quantiles", Some(f32_array(&unsorted)), "residual index 1: values"),
        ("personascope.calibration.response_std", Some(f32_array(&[1.0, -1.0, 1.0, 1.0])), "response_std`: value -1"),
        ("personascope.calibration.samples", None, "`personascope.calibration.samples` is missing"),
    ];
    for (key, value, expected) in edits {
        let mut p = Parts::of(&bytes);
        match value {
            Some(v) => p.set(key, v),
            None => p.remove(key),
        };
        let e = import_err(&p.bytes());
        assert!(e.to_string().contains(expected), "{key}: {e}");
    }

    // Personascope keys in a file that does not say it is one are not guessed at.
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.1", &[4], &[1.0; 4]).set("personascope.layer", Value::U32(2));
    assert!(matches!(import_err(&p.bytes()), VectorFileError::UnknownKey { .. }));
    let e = import_err(&llama_cpp_header(3).bytes());
    assert!(matches!(e, VectorFileError::NoRows { .. }), "{e}");
}

#[test]
fn export_refuses_inconsistent_vectors() {
    type Change = fn(&mut TraitVector);
    let changes: [(Change, &str); 13] = [
        (|v| v.rows[2].truncate(5), "row 2: 5 values, expected d_model = 6"),
        (|v| v.rows.truncate(4), "4 rows and 5 presence flags"),
        (|v| v.present.push(true), "5 rows and 6 presence flags"),
        (|v| v.rows[0][1] = f32::NAN, "row 0: value 1 is NaN"),
        (|v| v.present[3] = false, "row 3: is marked absent but is not zero"),
        (
            |v| v.present.iter_mut().zip(&mut v.rows).for_each(|(p, r)| (*p, *r) = (false, vec![0.0; 6])),
            "no row is present",
        ),
        (|v| v.meta.layer = Some(5), "personascope.layer: residual index 5 is beyond the last one, 4"),
        (|v| v.meta.screen_layer = Some(9), "personascope.screen_layer: residual index 9"),
        (|v| v.meta.n_layers = 0, "controlvector.layer_count: 0 blocks"),
        (|v| v.meta.d_model = 0, "personascope.d_model: 0;"),
        (|v| drop(v.meta.extra.insert(String::new(), "x".into())), "note needs a non-empty key"),
        (
            |v| v.meta.calibration.iter_mut().for_each(|c| c.token_std.truncate(4)),
            "personascope.calibration.token_std: 4 values, expected 5",
        ),
        (
            |v| v.meta.calibration.iter_mut().for_each(|c| c.token_quantiles[1].truncate(20)),
            "token_quantiles: residual index 1: 20 values, expected 21",
        ),
    ];
    for (change, expected) in changes {
        let mut v = full_vector(4, 6);
        change(&mut v);
        match to_gguf(&v) {
            Err(VectorFileError::Invalid(why)) => assert!(why.contains(expected), "{why}"),
            other => panic!("{expected}: expected Invalid, got {:?}", other.map(|b| b.len())),
        }
    }
}

#[test]
fn check_model_names_both_models() {
    let v = full_vector(30, 8);
    v.check_model("llama", Some("SmolLM2 135M Instruct"), 30, 8).expect("same model");
    v.check_model("LLaMA", None, 30, 8).expect("no name on the model side");
    let cases = [
        ("qwen2", Some("SmolLM2 135M Instruct"), 30, 8, "architecture"),
        ("llama", Some("SmolLM2 135M Instruct"), 30, 16, "d_model 8 vs 16"),
        ("llama", Some("SmolLM2 135M Instruct"), 24, 8, "30 blocks vs 24"),
        ("llama", Some("Llama 3.2 1B"), 30, 8, "name"),
    ];
    for (arch, name, n, d, what) in cases {
        let e = v.check_model(arch, name, n, d).expect_err("mismatch");
        let msg = e.to_string();
        assert!(matches!(e, VectorFileError::ModelMismatch(_)), "{msg}");
        assert!(msg.contains(what), "{msg}");
        assert!(msg.contains("llama \"SmolLM2 135M Instruct\" (30 blocks, d_model 8)"), "{msg}");
        assert!(msg.contains(arch) && msg.contains(&format!("({n} blocks, d_model {d})")), "{msg}");
        assert!(msg.contains("`evil`"), "{msg}");
        assert!(v.clone().for_model(arch, name, n, d).is_err());
    }
    let mut nameless = v.clone();
    nameless.meta.model_name = None;
    nameless.check_model("llama", Some("anything"), 30, 8).expect("no name on the vector side");
    // A hand-built vector whose rows disagree with its metadata is refused rather than trusted.
    let mut broken = v.clone();
    broken.rows.pop();
    assert!(matches!(broken.check_model("llama", None, 30, 8), Err(VectorFileError::Invalid(_))));
}

#[test]
fn calibration_percentile_and_z() {
    // Quantiles 0, 5, ..., 100 % of layer 1 are -10, -9, ..., 10; layer 0 has ties at the bottom.
    let linear: Vec<f32> = (0..21).map(|i| i as f32 - 10.0).collect();
    let mut tied = vec![0.0f32; 21];
    for (i, q) in tied.iter_mut().enumerate().skip(5) {
        *q = (i - 4) as f32;
    }
    let c = Calibration {
        token_mean: vec![1.0, -2.0],
        token_std: vec![0.5, 0.0],
        token_quantiles: vec![tied, linear],
        response_mean: vec![3.0, 4.0],
        response_std: vec![2.0, 4.0],
        difference_mean: Vec::new(),
        difference_std: Vec::new(),
        samples: 10,
    };
    let p = |l, s| c.percentile(l, s);
    assert_eq!(p(1, -10.0), Some(0.0));
    assert_eq!(p(1, -50.0), Some(0.0));
    assert_eq!(p(1, 10.0), Some(100.0));
    assert_eq!(p(1, f32::INFINITY), Some(100.0));
    assert_eq!(p(1, 0.0), Some(50.0));
    assert_eq!(p(1, 0.5), Some(52.5));
    assert_eq!(p(1, -9.75), Some(1.25));
    assert_eq!(p(1, 9.0), Some(95.0));
    assert_eq!(p(0, 0.0), Some(0.0));
    assert_eq!(p(0, 0.5), Some(22.5), "inside the first rising interval after the ties");
    assert_eq!(p(0, 16.0), Some(100.0));
    assert_eq!(p(1, f32::NAN), None);
    assert_eq!(p(2, 0.0), None);
    // Monotone in the score.
    let mut last = -1.0;
    for i in -120..=120 {
        let now = p(1, i as f32 / 10.0).expect("in range");
        assert!(now >= last, "{i}");
        last = now;
    }

    assert_eq!(c.z(0, 2.0), Some(2.0));
    assert_eq!(c.z(0, 0.0), Some(-2.0));
    assert_eq!(c.z(1, 0.0), None, "zero spread");
    assert_eq!(c.z(2, 0.0), None, "no such layer");
    assert_eq!(c.z(0, f32::NAN), None);
    assert_eq!(c.response_z(0, 7.0), Some(2.0));
    assert_eq!(c.response_z(1, 2.0), Some(-0.5));
}

#[test]
fn save_and_load() {
    let dir = std::env::temp_dir().join(format!("personascope-vector-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("evil.gguf");
    let v = full_vector(3, 5);
    save(&path, &v).expect("saves");
    assert_same(&v, &load(&path).expect("loads"));
    let missing = dir.join("missing.gguf");
    let e = load(&missing).expect_err("no such file");
    assert!(matches!(e, VectorFileError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_non_finite_tensor_value_names_the_tensor_not_a_metadata_key() {
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.1", &[4], &[1.0; 4]).add_f32("direction.2", &[4], &[1.0, f32::NAN, 0.0, 0.0]);
    let e = import_err(&p.bytes());
    assert!(matches!(&e, VectorFileError::BadTensor { name, .. } if name == "direction.2"), "{e}");
    assert!(!e.to_string().contains("metadata key"), "{e}");
}

#[test]
fn a_row_whose_norm_overflows_is_refused() {
    // 3e38 per value: finite, but the norm is not (steering with it gave NaN replies, monitoring called it zero).
    let mut p = llama_cpp_header(3);
    p.add_f32("direction.1", &[4], &[1.0; 4]).add_f32("direction.2", &[4], &[3e38; 4]);
    let e = import_err(&p.bytes());
    assert!(matches!(&e, VectorFileError::BadRow { .. }), "{e}");
    assert!(e.to_string().contains("norm") && !e.to_string().contains("metadata key"), "{e}");
}

#[test]
fn steering_strengths_are_checked_once_for_every_caller() {
    use personascope_persona::steer::{check_alpha, SteerSpec, MAX_ALPHA};
    for bad in [f32::NAN, f32::INFINITY, 1e38, -2.0 * MAX_ALPHA] {
        assert!(check_alpha(bad).is_err(), "{bad}");
    }
    assert!(check_alpha(-4.0).is_ok() && check_alpha(MAX_ALPHA).is_ok());
    let e = "v.gguf:10:1e38".parse::<SteerSpec>().expect_err("alpha too large").to_string();
    assert!(e.contains("alpha"), "{e}");
    // The fourth field is the positions: the error is about it, not about the alpha.
    let e = "v.gguf:10:1:bogus".parse::<SteerSpec>().expect_err("bad positions").to_string();
    assert!(e.contains("positions \"bogus\"") && !e.contains("alpha \""), "{e}");
    let ok = "C:/x/v.gguf:3:-1".parse::<SteerSpec>().expect("a path with a colon");
    assert_eq!((ok.path.as_str(), ok.layer, ok.alpha), ("C:/x/v.gguf", 3, -1.0));
}
