//! Helpers shared by the cross-crate tests: where the model and golden files are, and comparisons that print
//! the first differing values.

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The default model. Tests that need it fail (not skip) when it is absent, saying how to install it.
pub fn default_model() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `bash models/fetch.sh` first", p.display());
    p
}

pub fn golden_path(name: &str) -> PathBuf {
    let p = root().join("tests/golden").join(name);
    assert!(p.exists(), "golden file {} is missing (see tests/golden/README.md)", p.display());
    p
}

pub fn golden_json(name: &str) -> serde_json::Value {
    let p = golden_path(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array of numbers").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// ||a - b|| / ||b||, in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// The first few indices where |a - b| is largest, formatted for a failure message.
pub fn worst_diffs(a: &[f32], b: &[f32], k: usize) -> String {
    let mut idx: Vec<usize> = (0..a.len().min(b.len())).collect();
    idx.sort_by(|&i, &j| (a[j] - b[j]).abs().total_cmp(&(a[i] - b[i]).abs()));
    idx.iter().take(k).map(|&i| format!("[{i}] ours {} ref {}", a[i], b[i])).collect::<Vec<_>>().join(", ")
}
