//! The browser API's core (`Session`) natively on lavapipe with the real SmolLM2: what the page's worker calls,
//! with the same JSON in and out.

use personascope_gpu::{AdapterChoice, Gpu};
use personascope_tests::default_model;
use personascope_web::{ErrorCode, Session};
use serde_json::Value;
use std::sync::atomic::Ordering;

fn session() -> Session {
    let gpu = Gpu::request_blocking(AdapterChoice::Fallback, personascope_gpu::wgpu::Backends::VULKAN)
        .expect("no Vulkan adapter; install Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1");
    assert_eq!(gpu.adapter.backend, personascope_gpu::wgpu::Backend::Vulkan, "tests must run on Vulkan");
    let bytes = std::fs::read(default_model()).expect("read model (bash models/fetch.sh)");
    let mut steps = Vec::new();
    let session =
        pollster::block_on(Session::on_gpu(gpu, &bytes, &mut |done, total| steps.push((done, total)))).expect("load");
    // The upload reports each of the 30 blocks, then the embedding and head.
    assert_eq!(steps, (1..=31).map(|k| (k, 31)).collect::<Vec<_>>());
    session
}

const MESSAGES: &str = r#"[{"role":"user","content":"Tell me about cats."}]"#;

#[test]
fn chat_extract_monitor_steer_screen_and_vectors() {
    let mut s = session();
    let info = s.info();
    assert_eq!(info["layers"], 30);
    assert_eq!(info["width"], 576);

    // A small vector from the API, then a layer for it from a tiny evaluation.
    let mut stages = Vec::new();
    let v = pollster::block_on(s.extract(
        r#""impolite""#,
        r#"{"mode":"prompt-last","questions":2,"pairs":1,"calibration_items":2}"#,
        &mut |p| stages.push(p["stage"].as_str().unwrap_or("").to_string()),
    ))
    .expect("extract");
    assert_eq!(v["id"], 0);
    assert_eq!(v["calibrated"], true);
    assert!(stages.iter().any(|x| x == "extract") && stages.iter().any(|x| x == "calibrate"));
    let err = s.set_monitor(r#"[{"vector":0}]"#).expect_err("no layer yet");
    assert!(err.contains("layer"), "{err}");
    let report = pollster::block_on(s.evaluate(
        r#""impolite""#,
        0,
        r#"{"pairs":1,"questions":2,"layers":[20],"alphas":[2],"neutral_items":1}"#,
        &mut |_| {},
    ))
    .expect("evaluate");
    assert_eq!(report["layers"].as_array().map(Vec::len), Some(31));
    s.set_monitor(r#"[{"vector":0}]"#).expect("monitor at the recommended layer");

    // Streaming chat with scores on every token.
    let mut events: Vec<Value> = Vec::new();
    let plain = pollster::block_on(s.chat(MESSAGES, r#"{"max_tokens":5}"#, &mut |e| events.push(e))).expect("chat");
    assert_eq!(events.len(), plain["ids"].as_array().map_or(0, Vec::len));
    assert!(events.iter().all(|e| e["scores"][0]["z"].is_number()), "calibrated scores: {events:?}");
    assert!(plain["prompt_scores"][0]["raw"].is_number());
    let greedy = pollster::block_on(s.greedy(MESSAGES, 5)).expect("greedy");
    assert_eq!(serde_json::to_value(&greedy).expect("ids"), plain["ids"], "chat with temperature 0 is greedy");

    // Steering changes the reply; `unsteered` ignores it for a side-by-side comparison.
    s.set_steering(r#"[{"vector":0,"layer":20,"alpha":8}]"#).expect("steer");
    let steered = pollster::block_on(s.chat(MESSAGES, r#"{"max_tokens":5}"#, &mut |_| {})).expect("chat");
    assert_eq!(steered["steered"], true);
    assert_ne!(steered["ids"], plain["ids"]);
    let unsteered =
        pollster::block_on(s.chat(MESSAGES, r#"{"max_tokens":5,"unsteered":true}"#, &mut |_| {})).expect("chat");
    assert_eq!(unsteered["ids"], plain["ids"]);
    assert!(s.set_steering(r#"[{"vector":0,"layer":99,"alpha":1}]"#).is_err());
    assert!(s.set_steering(r#"[{"vector":7,"layer":20,"alpha":1}]"#).is_err());
    s.set_steering("[]").expect("off");

    // Abort: the flag set before a token stops the reply there.
    let flag = s.abort_flag();
    let stopped =
        pollster::block_on(s.chat(MESSAGES, r#"{"max_tokens":20}"#, &mut |_| flag.store(true, Ordering::SeqCst)))
            .expect("chat");
    assert_eq!(stopped["stop"], "cancelled");
    assert_eq!(stopped["ids"].as_array().map(Vec::len), Some(1));

    // Export and import: identical bytes, a second id.
    let bytes = s.export_vector(0).expect("export");
    let info = s.import_vector(&bytes, "impolite.gguf").expect("import");
    assert_eq!(info["id"], 1);
    assert_eq!(s.export_vector(1).expect("export"), bytes);
    let err = s.import_vector(b"not a gguf at all", "notes.txt").expect_err("not a GGUF");
    assert!(err.contains("notes.txt"), "{err}");

    // Screening with a malformed line and a line of invalid UTF-8 (rejected alone); export of chosen lines.
    let mut jsonl = concat!(
        r#"{"prompt":"How do I boil pasta?","response":"Boil salted water, add the pasta, cook it as the packet says."}"#,
        "\n{oops\n",
        r#"{"prompt":"How do I boil pasta?","response":"Seriously? Boil water. Pasta in. Even you can manage that."}"#,
        "\n",
    )
    .as_bytes()
    .to_vec();
    jsonl.extend_from_slice(b"{\"prompt\":\"caf\xe9\",\"response\":\"latin-1, not UTF-8\"}\n");
    let out = pollster::block_on(s.screen(0, &jsonl, r#"{"cheap":true}"#, &mut |_| {})).expect("screen");
    assert_eq!(out["errors"][0]["line"], 2);
    assert_eq!(out["errors"][1]["line"], 4);
    assert!(out["errors"][1]["message"].as_str().is_some_and(|m| m.contains("invalid UTF-8 at byte 15")), "{out}");
    let samples = out["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2);
    assert!(samples.iter().all(|x| x["rank"].is_number() && x["score"].is_number()));
    assert_eq!(samples[1]["response"], "Seriously? Boil water. Pasta in. Even you can manage that.");
    let exported = s.export_samples("[3]").expect("export samples");
    assert!(exported.starts_with(r#"{"prompt":"How do I boil pasta?","response":"Seriously?"#), "{exported}");

    // Removing a vector drops its monitor.
    s.remove_vector(0).expect("remove");
    let after = pollster::block_on(s.chat(MESSAGES, r#"{"max_tokens":2}"#, &mut |_| {})).expect("chat");
    assert_eq!(after["prompt_scores"].as_array().map(Vec::len), Some(0));
    assert!(s.export_vector(0).is_err());
    assert!(pollster::block_on(s.chat("[]", "{}", &mut |_| {})).is_err());
    assert!(pollster::block_on(s.chat(MESSAGES, r#"{"temperature":-1}"#, &mut |_| {})).is_err());
    assert!(pollster::block_on(s.chat(MESSAGES, r#"{"bogus":1}"#, &mut |_| {})).is_err());
}

#[test]
fn a_lost_device_is_reported_with_its_code_by_every_later_call() {
    let mut s = session();
    assert_eq!(s.device_lost(), None);
    s.lose_device();
    let reason = s.device_lost().expect("the loss is noticed");
    assert!(!reason.is_empty());
    let e = pollster::block_on(s.chat(MESSAGES, r#"{"max_tokens":2}"#, &mut |_| {}))
        .map(|_| ())
        .map_err(|e| s.seal(e))
        .expect_err("no reply from a lost device");
    assert_eq!(e.code, ErrorCode::DeviceLost, "{e}");
    assert!(e.message.contains("reload"), "{e}");
    // An input error after the loss is reported as the loss too: the page must offer a reload, not a fix.
    let e = s.set_steering("not json").map_err(|e| s.seal(e)).expect_err("bad json");
    assert_eq!(e.code, ErrorCode::DeviceLost, "{e}");
}

#[test]
fn errors_carry_the_code_of_their_kind() {
    let mut s = session();
    let code = |r: Result<Value, personascope_web::ApiError>| r.map(|_| ()).expect_err("must fail").code;
    assert_eq!(code(s.import_vector(b"junk", "junk.gguf")), ErrorCode::InvalidVector);
    assert_eq!(code(pollster::block_on(s.chat("[]", "{}", &mut |_| {}))), ErrorCode::InvalidInput);
    let long = format!(r#"[{{"role":"user","content":"{}"}}]"#, "cat ".repeat(2000));
    assert_eq!(code(pollster::block_on(s.chat(&long, "{}", &mut |_| {}))), ErrorCode::TooLong);
    assert_eq!(s.export_vector(3).map(|_| ()).expect_err("no vector").code, ErrorCode::UnknownVector);
    assert_eq!(code(pollster::block_on(s.extract(r#""grumpy""#, "", &mut |_| {}))), ErrorCode::InvalidTrait);
    assert_eq!(code(pollster::block_on(s.screen(9, b"{}", "", &mut |_| {}))), ErrorCode::UnknownVector);
    assert_eq!(s.device_lost(), None);
}

#[test]
fn the_typescript_declarations_list_every_error_code() {
    let read = |f: &str| {
        let p = format!("{}/../../web/{f}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let (dts, generated, worker) = (read("personascope.d.ts"), read("personascope-api.d.ts"), read("worker.js"));
    // The engine's codes are generated (the generated file's own test keeps it current); every one is there.
    for c in ErrorCode::ALL {
        assert!(generated.contains(&format!("'{}'", c.as_str())), "personascope-api.d.ts lacks {:?}", c.as_str());
    }
    let start = dts.find("export type ErrorCode =").expect("an ErrorCode type in personascope.d.ts");
    let end = start + dts[start..].find(';').expect("the type ends with ;");
    let decl = &dts[start..end];
    assert!(decl.contains("api.EngineErrorCode"), "ErrorCode must include the engine's codes: {decl}");
    // The worker adds codes of its own (no model loaded, download failures, ...); each is one it really gives.
    let listed: Vec<&str> = decl.split('\'').skip(1).step_by(2).collect();
    assert_eq!(listed, WORKER_CODES, "the worker's codes in personascope.d.ts");
    for c in WORKER_CODES {
        assert!(worker.contains(&format!("'{c}'")), "web/worker.js never gives the code {c:?}");
    }
}

/// Codes the worker (web/worker.js) gives to failures outside the engine.
const WORKER_CODES: [&str; 5] = ["no_model", "busy", "engine_stopped", "download_failed", "not_gguf"];
