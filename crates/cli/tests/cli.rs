//! The machine-readable CLI commands, run as a user would, checked against the golden references.

use personascope_tests::{default_model, f32s, golden_json, u32s};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn personascope(args: &[&str]) -> (bool, String, String) {
    // The GPU runs use the software Vulkan adapter (lavapipe) so they run on machines without a GPU.
    let out = Command::new(env!("CARGO_BIN_EXE_personascope"))
        .args(args)
        .env("PERSONASCOPE_ADAPTER", "fallback")
        .output()
        .expect("run personascope");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn json_of(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = personascope(args);
    assert!(ok, "personascope {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-test-files");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write");
    p
}

fn model() -> String {
    default_model().display().to_string()
}

fn first_case_messages(name: &str) -> PathBuf {
    let g = golden_json("smollm2_forward.json");
    scratch(name, &g["cases"][0]["messages"].to_string())
}

#[test]
fn tokenize_matches_golden() {
    let g = golden_json("tokenizer_smollm2.json");
    for (i, case) in g["cases"].as_array().expect("cases").iter().enumerate().take(12) {
        let f = scratch(&format!("tok{i}.txt"), case["text"].as_str().expect("text"));
        let out = json_of(&["tokenize", "--model", &model(), "--text-file", f.to_str().expect("path")]);
        assert_eq!(u32s(&out["ids"]), u32s(&case["ids"]), "case {i}: {:?}", case["text"]);
    }
}

#[test]
fn render_logits_residuals_generate() {
    let g = golden_json("smollm2_forward.json");
    let case = &g["cases"][0];
    let msgs = first_case_messages("france.json");
    let msgs = msgs.to_str().expect("path");

    let rendered = json_of(&["render", "--model", &model(), "--messages", msgs]);
    assert!(rendered["text"].as_str().expect("text").ends_with("<|im_start|>assistant\n"));

    let logits = json_of(&["logits", "--model", &model(), "--messages", msgs, "--top-k", "5"]);
    assert_eq!(u32s(&logits["prompt_ids"]), u32s(&case["prompt_ids"]));
    let top = logits["top"].as_array().expect("top");
    assert_eq!(top.len(), 5);
    assert_eq!(top[0][0], case["top_logits"][0][0], "argmax token");

    let res = json_of(&["residuals", "--model", &model(), "--messages", msgs, "--backend", "cpu"]);
    let norms = f32s(&res["norms"]);
    let want = f32s(&case["residual_norms"]);
    assert_eq!(norms.len(), 30, "one norm per block");
    for (b, (got, want)) in norms.iter().zip(&want[1..]).enumerate() {
        assert!((got - want).abs() <= 1e-4 * want.abs(), "block {b}: norm {got} vs reference {want}");
    }

    let gen =
        json_of(&["generate", "--model", &model(), "--messages", msgs, "--max-tokens", "16", "--greedy", "--json"]);
    assert!(gen["text"].as_str().expect("text").contains("Paris"), "{gen}");
    assert_eq!(u32s(&gen["prompt_ids"]), u32s(&case["prompt_ids"]));
    let ids = u32s(&gen["ids"]);
    assert_eq!(ids[..6], u32s(&case["greedy"]["ids"])[..6]);

    // Sampling with a seed is reproducible.
    let s = ["generate", "--model", &model(), "--messages", msgs, "--max-tokens", "8", "--temperature", "1.0"];
    let a = json_of(&[&s[..], &["--seed", "3", "--json"]].concat());
    let b = json_of(&[&s[..], &["--seed", "3", "--json"]].concat());
    assert_eq!(a["ids"], b["ids"]);
}

#[test]
fn bad_input_gives_clear_errors() {
    let (ok, _, err) = personascope(&["inspect", "/nonexistent/model.gguf"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");

    let not_gguf = scratch("not.gguf", "hello, I am not a model");
    let (ok, _, err) = personascope(&["tokenize", "--model", not_gguf.to_str().expect("p"), "--text-file", "x"]);
    assert!(!ok && err.contains("not a GGUF file"), "{err}");

    let bad = scratch("bad-messages.json", "{\"role\": \"user\"}");
    let (ok, _, err) = personascope(&["render", "--model", &model(), "--messages", bad.to_str().expect("p")]);
    assert!(!ok && err.contains("bad-messages.json") && err.contains("JSON array"), "{err}");

    let (ok, _, err) = personascope(&["logits", "--model", &model(), "--messages", "m.json", "--backend", "tpu"]);
    assert!(!ok && err.contains("tpu"), "{err}");
}

#[test]
fn inspect_describes_the_model() {
    let out = json_of(&["inspect", &model(), "--json"]);
    assert_eq!(out["architecture"], "llama");
    assert_eq!(out["tokenizer"]["pre"], "smollm");
    assert!(out["tensor_types"]["Q4_1"]["count"].as_u64().expect("count") > 100);
    let (ok, text, _) = personascope(&["inspect", &model()]);
    assert!(ok && text.contains("30 blocks") && text.contains("residual"), "{text}");
}

#[test]
fn gpu_backend_matches_cpu() {
    // Native wgpu on the software Vulkan driver: greedy ids and top logits equal the CPU reference's.
    let msgs = first_case_messages("france-gpu.json");
    let msgs = msgs.to_str().expect("path");
    let m = model();
    let generate = |backend: &str| {
        let a = ["generate", "--model", &m, "--messages", msgs, "--max-tokens", "8", "--greedy", "--json"];
        json_of(&[&a[..], &["--backend", backend]].concat())
    };
    let (gpu, cpu) = (generate("gpu"), generate("cpu"));
    assert_eq!(gpu["ids"], cpu["ids"], "gpu {gpu} cpu {cpu}");
    assert!(gpu["text"].as_str().expect("text").contains("Paris"));
    let top =
        |backend: &str| json_of(&["logits", "--model", &m, "--messages", msgs, "--top-k", "5", "--backend", backend]);
    let (g, c) = (top("gpu"), top("cpu"));
    for i in 0..5 {
        assert_eq!(g["top"][i][0], c["top"][i][0], "top-{i} token");
        let (a, b) = (g["top"][i][1].as_f64().expect("logit"), c["top"][i][1].as_f64().expect("logit"));
        assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "top-{i} logit gpu {a} cpu {b}");
    }
}
