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

/// The persona commands end to end, small: extract (prompt-last, 2 questions x 1 pair) -> eval (saves the
/// recommendation) -> screen (with a malformed line) -> generate with --steer and --monitor on both backends.
#[test]
fn persona_commands_extract_eval_screen_steer_monitor() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-persona");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (v, ex) = small_vector(&dir);
    let vs = v.to_str().expect("path");
    assert_eq!(ex["kept"], serde_json::json!([2, 2]), "{ex}");
    assert_eq!(ex["norms"].as_array().expect("norms").len(), 31);

    let ev = json_of(&[
        "eval",
        "--model",
        &model(),
        "--trait",
        "impolite",
        "--vector",
        vs,
        "--questions",
        "2",
        "--pairs",
        "1",
        "--layers",
        "20",
        "--alphas",
        "2",
        "--save",
        "--json",
    ]);
    assert_eq!(ev["layers"].as_array().expect("layers").len(), 31, "{ev}");
    let rec = &ev["recommended"];
    assert!(rec["layer"].as_u64().is_some() && rec["screen_layer"].as_u64().is_some(), "{ev}");
    let row = &ev["steering"][0];
    assert_eq!(row["layer"], 20);
    assert!(row["perplexity"].as_f64().expect("ppl") > 1.0);

    // The file now carries the recommendation: monitoring and screening need no layer argument.
    let data = scratch(
        "screen.jsonl",
        concat!(
            r#"{"prompt":"How do I boil pasta?","response":"Boil salted water, add the pasta, cook it as the packet says."}"#,
            "\n{broken\n",
            r#"{"messages":[{"role":"user","content":"How do I boil pasta?"},{"role":"assistant","content":"Are you serious? Boil water. Pasta in. Even you can manage that, I hope."}]}"#,
            "\n"
        ),
    );
    let out = dir.join("scores.jsonl");
    let flagged = dir.join("flagged.jsonl");
    let csv = dir.join("report.csv");
    let (ok, stdout, stderr) = personascope(&[
        "screen",
        "--model",
        &model(),
        "--vector",
        vs,
        "--data",
        data.to_str().expect("p"),
        "--out",
        out.to_str().expect("p"),
        "--cheap",
        "--score-threshold",
        "-1e30",
        "--flagged",
        flagged.to_str().expect("p"),
        "--csv",
        csv.to_str().expect("p"),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("line 2"), "malformed line reported with its number: {stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["samples"], 2);
    assert_eq!(report["malformed"][0]["line"], 2);
    assert_eq!(report["flagged"], 2);
    assert_eq!(report["threshold"]["score"].as_f64().map(|x| x as f32), Some(-1e30f32));
    // Every neutral sample scores above a threshold of -1e30: the expected false-positive rate says so.
    assert_eq!(report["threshold"]["expected_false_positive_rate"].as_f64(), Some(1.0), "{report}");
    assert!(report["null"]["std"].as_f64().is_some_and(|s| s > 0.0), "{report}");
    let rows: Vec<Value> =
        std::fs::read_to_string(&out).expect("scores").lines().map(|l| serde_json::from_str(l).expect("row")).collect();
    assert_eq!(rows.iter().map(|r| r["line"].as_u64().expect("line")).collect::<Vec<_>>(), vec![1, 3]);
    assert!(rows.iter().all(|r| r["rank"].as_u64().is_some() && r["score"].as_f64().is_some()));
    assert_eq!(std::fs::read_to_string(&flagged).expect("flagged").lines().count(), 2);
    assert!(std::fs::read_to_string(&csv).expect("csv").starts_with("rank,line,score,z,flagged,prompt,response"));

    let msgs = scratch("steer-msgs.json", r#"[{"role":"user","content":"Tell me about cats."}]"#);
    let m = msgs.to_str().expect("p");
    let model_path = model();
    let gen = |backend: &str, steer: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            &model_path,
            "--messages",
            m,
            "--max-tokens",
            "6",
            "--greedy",
            "--json",
            "--backend",
            backend,
        ];
        args.extend_from_slice(&["--monitor", vs]);
        for s in steer {
            args.extend_from_slice(&["--steer", s]);
        }
        json_of(&args)
    };
    let strong = format!("{vs}:20:8");
    let plain = gen("cpu", &[]);
    let steered = gen("cpu", &[&strong]);
    assert_ne!(plain["ids"], steered["ids"], "a strong steer changes the reply: {plain} vs {steered}");
    let trait0 = &steered["scores"][0];
    assert_eq!(trait0["trait"], "impolite");
    assert_eq!(trait0["tokens"].as_array().expect("tokens").len(), steered["ids"].as_array().expect("ids").len());
    assert!(trait0["prompt_last"]["z"].as_f64().is_some(), "calibrated: {trait0}");
    let mean_raw = |v: &Value| {
        let t = v["scores"][0]["tokens"].as_array().expect("tokens");
        t.iter().map(|s| s["raw"].as_f64().expect("raw")).sum::<f64>() / t.len() as f64
    };
    assert!(mean_raw(&steered) > mean_raw(&plain), "steering toward the trait raises its monitored score");
    let gpu = gen("gpu", &[&strong]);
    assert_eq!(gpu["ids"], steered["ids"], "GPU steered tokens equal the CPU's");

    // A vector for another model is refused, naming both.
    let tiny = personascope_tests::golden_path("qwen2_tiny.gguf");
    let (ok, _, err) = personascope(&[
        "generate",
        "--model",
        tiny.to_str().expect("p"),
        "--messages",
        m,
        "--max-tokens",
        "2",
        "--monitor",
        vs,
    ]);
    assert!(!ok && err.contains("was made for") && err.contains("qwen2"), "{err}");
    let (ok, _, err) = personascope(&["generate", "--model", &model(), "--messages", m, "--steer", "nope.gguf:3"]);
    assert!(!ok && err.contains("--steer"), "{err}");
}

#[test]
fn persona_bench_times_every_job_on_both_backends() {
    for backend in ["cpu", "gpu"] {
        let r = json_of(&[
            "bench",
            "--persona",
            "--model",
            &model(),
            "--backend",
            backend,
            "--persona-questions",
            "2",
            "--persona-pairs",
            "1",
            "--persona-samples",
            "3",
            "--persona-answer-tokens",
            "4",
            "--persona-neutral",
            "2",
            "--json",
        ]);
        assert_eq!(r["backend"], backend, "{r}");
        assert_eq!(r["extract_prompt_last"]["prompts"], 4.0, "{r}");
        for job in ["extract_prompt_last", "calibration", "evaluation", "extract_response"] {
            assert!(r[job]["seconds"].as_f64().is_some_and(|s| s > 0.0), "{job}: {r}");
        }
        for mode in ["cheap", "projection_difference"] {
            assert_eq!(r["screening"][mode]["samples"], 3.0, "{mode}: {r}");
        }
        // The GPU counts its submits and dispatches per job; the CPU has none to count.
        let submits = r["evaluation"]["gpu"]["submits"].as_u64();
        assert_eq!(submits.is_some(), backend == "gpu", "{r}");
        if let Some(s) = submits {
            assert!(s > 0 && r["evaluation"]["gpu"]["dispatches"].as_u64() > Some(s), "{r}");
        }
    }
}

/// A small vector for the screening tests (prompt-last, one pair, two questions, three calibration items).
/// A prompt-last impolite vector from 2 questions x 1 pair, calibrated on 3 neutral items (seconds on 2 cores):
/// its path and the CLI's JSON report.
fn small_vector(dir: &std::path::Path) -> (PathBuf, serde_json::Value) {
    let v = dir.join("small-impolite.gguf");
    let report = json_of(&[
        "extract",
        "--model",
        &model(),
        "--trait",
        "impolite",
        "--mode",
        "prompt-last",
        "--questions",
        "2",
        "--pairs",
        "1",
        "--calibration-items",
        "3",
        "--out",
        v.to_str().expect("path"),
        "--json",
    ]);
    (v, report)
}

#[test]
fn screen_checks_its_output_paths_before_it_starts() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-screen-paths");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let data = scratch("paths.jsonl", "{\"prompt\":\"Hi\",\"response\":\"Hello.\"}\n");
    let d = data.to_str().expect("p");
    let missing = dir.join("no-such-dir").join("scores.jsonl");
    // The vector is never read: the paths are refused first.
    let vector = dir.join("not-read.gguf");
    let v = vector.to_str().expect("p");
    let run = |out: &str, kept: &str| {
        personascope(&["screen", "--model", &model(), "--vector", v, "--data", d, "--out", out, "--kept", kept])
    };
    let ok_out = dir.join("scores.jsonl");
    let (ok, _, stderr) = run(missing.to_str().expect("p"), ok_out.to_str().expect("p"));
    assert!(!ok && stderr.contains("does not exist") && stderr.contains("no-such-dir"), "{stderr}");
    let (ok, _, stderr) = run(ok_out.to_str().expect("p"), d);
    assert!(!ok && stderr.contains("is also the input"), "{stderr}");
    let (ok, _, stderr) = run(ok_out.to_str().expect("p"), ok_out.to_str().expect("p"));
    assert!(!ok && stderr.contains("two outputs"), "{stderr}");
    let (ok, _, stderr) = run(dir.to_str().expect("p"), ok_out.to_str().expect("p"));
    assert!(!ok && stderr.contains("is a directory"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&data).expect("data intact"), "{\"prompt\":\"Hi\",\"response\":\"Hello.\"}\n");
}

#[test]
fn an_interrupted_screen_exits_non_zero_and_marks_its_outputs_partial() {
    use std::io::BufRead;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-screen-interrupt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (v, _) = small_vector(&dir);
    // Far more samples than can be screened before the interrupt; one line is not UTF-8 and is rejected alone.
    let line = r#"{"prompt":"How do I boil pasta?","response":"Boil salted water, add the pasta, cook it as the packet says."}"#;
    let mut bytes = Vec::new();
    for i in 0..4000 {
        if i == 1 {
            bytes.extend_from_slice(b"{\"prompt\":\"caf\xe9\",\"response\":\"x\"}\n");
        } else {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
    }
    let data = dir.join("many.jsonl");
    std::fs::write(&data, &bytes).expect("write data");
    let (out, kept) = (dir.join("scores.jsonl"), dir.join("kept.jsonl"));
    for p in [&out, &kept] {
        let _ = std::fs::remove_file(p);
        let mut partial = p.as_os_str().to_owned();
        partial.push(".partial");
        let _ = std::fs::remove_file(PathBuf::from(partial));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_personascope"))
        .args(["screen", "--model", &model(), "--vector", v.to_str().expect("p"), "--data"])
        .args([data.as_os_str(), "--out".as_ref(), out.as_os_str(), "--kept".as_ref(), kept.as_os_str()])
        .args(["--cheap", "--layer", "20"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // stderr is read to its end on a thread (a closed pipe would fail the child's later messages).
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    for l in rx.iter() {
        seen.push(l.clone());
        // The first progress line: screening is under way. Interrupt it as Ctrl-C would.
        if l.starts_with("screen: ") && l.contains('/') {
            let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
            assert!(st.success());
            break;
        }
    }
    seen.extend(rx.iter());
    reader.join().expect("reader");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "an interrupted screen must exit non-zero; stderr: {seen:?}");
    let text = |p: &PathBuf| {
        let mut s = p.as_os_str().to_owned();
        s.push(".partial");
        std::fs::read_to_string(PathBuf::from(s))
    };
    assert!(!out.exists() && !kept.exists(), "complete-looking outputs were written");
    let scores = text(&out).expect("scores.jsonl.partial");
    let n = scores.lines().count();
    assert!(n > 0 && n < 3999, "{n} scored lines");
    assert_eq!(text(&kept).expect("kept.jsonl.partial").lines().count(), n);
    assert!(seen.iter().any(|l| l.contains("line 2") && l.contains("invalid UTF-8")), "{seen:?}");
}

#[test]
fn chat_survives_invalid_utf8_and_answers_unknown_commands_with_help() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_personascope"))
        .args(["chat", &model(), "--max-tokens", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn chat");
    let mut stdin = child.stdin.take().expect("stdin");
    // Before the fix, the invalid line ended the chat with an error, and "/bogus" went to the model.
    stdin.write_all(b"/bogus\n\xff\xfe not utf-8\nHello\n/quit\n").expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("chat output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("unknown command \"/bogus\"") && stdout.contains("/reset"), "{stdout}");
    assert!(stderr.contains("not valid UTF-8 at byte 1"), "{stderr}");
    // The chat went on: the next line got a reply.
    assert!(stderr.contains("(2 tokens,"), "{stderr}");
}

#[test]
fn unknown_roles_and_bad_steering_are_refused_as_the_js_api_refuses_them() {
    let m = scratch("wizard.json", r#"[{"role":"wizard","content":"hi"}]"#);
    let (ok, _, stderr) = personascope(&["generate", "--model", &model(), "--messages", m.to_str().expect("p")]);
    assert!(!ok && stderr.contains("message 0 has role \"wizard\""), "{stderr}");
    let m = scratch("hi.json", r#"[{"role":"user","content":"hi"}]"#);
    let (ok, _, stderr) = personascope(&[
        "generate",
        "--model",
        &model(),
        "--messages",
        m.to_str().expect("p"),
        "--steer",
        "v.gguf:10:1:bogus",
    ]);
    assert!(!ok && stderr.contains("positions \"bogus\""), "{stderr}");
}
