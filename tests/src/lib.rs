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

/// Plans and comparisons shared by the CPU and GPU engine tests: a mixed set of passes (every kind of plan output,
/// prompts that share system prompts) and a check of one [`PlanOut`] against another within tolerances.
pub mod plans {
    use std::sync::Arc;

    use personascope_model::plan::{units, Plan, PlanOut, Span};
    use personascope_model::schedule::PassSpec;
    use personascope_model::{Message, Model, Steering};

    use crate::rel_l2;

    /// Tolerances of a comparison: relative L2 of residual rows, relative projection scores, absolute
    /// log-probabilities.
    pub struct Tolerance {
        pub rows: f64,
        pub scores: f32,
        pub logprobs: f32,
    }

    pub fn prompt(m: &Model, system: &str, user: &str) -> Vec<u32> {
        let msgs = [
            Message { role: "system".into(), content: system.into() },
            Message { role: "user".into(), content: user.into() },
        ];
        m.template.encode_prompt(&m.tokenizer, &msgs).expect("prompt")
    }

    pub fn vector(d: usize, seed: u32) -> Vec<f32> {
        (0..d).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5).collect()
    }

    pub fn close(what: &str, a: &[f32], b: &[f32], tol: f64) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        if a.is_empty() {
            return;
        }
        let e = rel_l2(a, b);
        assert!(e < tol, "{what}: rel err {e:.2e} (tolerance {tol:.0e})");
    }

    pub fn same_out(what: &str, got: &PlanOut, want: &PlanOut, tol: &Tolerance) {
        assert_eq!(got.captured.len(), want.captured.len(), "{what}: captured positions");
        for ((pg, rg), (pw, rw)) in got.captured.iter().zip(&want.captured) {
            assert_eq!(pg, pw, "{what}: captured position");
            for (l, (a, b)) in rg.iter().zip(rw).enumerate() {
                close(&format!("{what}: capture pos {pg} layer {l}"), a, b, tol.rows);
            }
        }
        match (&got.mean, &want.mean) {
            (Some(g), Some(w)) => {
                for (l, (a, b)) in g.iter().zip(w).enumerate() {
                    close(&format!("{what}: mean layer {l}"), a, b, tol.rows);
                }
            }
            (None, None) => {}
            _ => panic!("{what}: mean present on one side only"),
        }
        assert_eq!(got.scores.len(), want.scores.len(), "{what}: projected positions");
        for ((pg, sg), (pw, sw)) in got.scores.iter().zip(&want.scores) {
            assert_eq!(pg, pw);
            for (a, b) in sg.iter().flatten().zip(sw.iter().flatten()) {
                assert!(
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol.scores * b.abs().max(1.0),
                    "{what}: score {a} vs {b}"
                );
            }
        }
        assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}: logprobs");
        for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
            assert!((a - b).abs() < tol.logprobs, "{what}: logprob {a} vs {b}");
        }
    }

    /// Passes of every kind over prompts that share system prompts, and their reference results.
    pub fn mixed_passes(m: &Model) -> Vec<PassSpec> {
        let c = &m.config;
        let (n, d) = (c.n_layers, c.d_model);
        let systems = ["You are a pirate. Answer like one.", "You are a careful, polite assistant."];
        let questions = ["What is the capital of France?", "How do I boil an egg?", "Name a colour."];
        let answer = m.tokenizer.encode(" Paris is the capital, of course.").expect("answer");
        let mut out = Vec::new();
        for (si, sys) in systems.iter().enumerate() {
            for (qi, q) in questions.iter().enumerate() {
                let p = prompt(m, sys, q);
                let pl = p.len();
                let mut with_answer = p.clone();
                with_answer.extend(&answer);
                let len = with_answer.len();
                let steer = Steering {
                    layer: 10 + qi,
                    vector: vector(d, si as u32),
                    alpha: 2.0,
                    positions: pl - 1..usize::MAX,
                };
                out.push(PassSpec {
                    tokens: p.clone(),
                    plan: Plan { capture: Some(Span::all_layers(pl - 1..pl, n)), ..Default::default() },
                });
                out.push(PassSpec {
                    tokens: with_answer.clone(),
                    plan: Plan {
                        steer: vec![steer.clone()],
                        mean: Some(Span { positions: pl..len, layers: vec![0, 5, 20, n] }),
                        logprobs: Some(pl..len),
                        project: Some(pl - 1..len),
                        ..Default::default()
                    },
                });
                out.push(PassSpec {
                    tokens: with_answer,
                    plan: Plan {
                        capture: Some(Span { positions: pl - 2..pl + 2, layers: vec![3, 17] }),
                        logprobs: Some(pl + 1..pl + 3),
                        ..Default::default()
                    },
                });
            }
        }
        out
    }

    pub fn mixed_monitor(m: &Model) -> Arc<personascope_model::Units> {
        let (n, d) = (m.config.n_layers, m.config.d_model);
        let raw: Vec<Vec<Option<Vec<f32>>>> = (0..2)
            .map(|t| (0..=n).map(|l| (l % (t + 2) == 0).then(|| vector(d, 100 + t as u32 * 7 + l as u32))).collect())
            .collect();
        units(&raw)
    }
}
