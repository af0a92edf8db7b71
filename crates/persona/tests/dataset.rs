//! JSONL data sets for screening: both line formats, every kind of malformed line, line numbering, the exports, and
//! the team-written screening files in `tests/data/screening/`.

use std::collections::{BTreeMap, HashSet};

use personascope_persona::dataset::{
    csv_field, csv_report, parse_jsonl, write_jsonl, LineError, Message, Parsed, Role, Sample,
};
use serde_json::Value;

fn user(text: &str) -> Message {
    Message::new(Role::User, text)
}

/// The only error of a one-line input, whose line must be malformed.
fn error_of(line: &str) -> String {
    let parsed = parse_jsonl(line);
    assert!(parsed.samples.is_empty(), "expected an error for {line:?}, got {:?}", parsed.samples);
    assert_eq!(parsed.errors.len(), 1, "{line:?}");
    assert_eq!(parsed.errors[0].line, 1);
    parsed.errors[0].message.clone()
}

fn assert_error(line: &str, expected: &[&str]) {
    let message = error_of(line);
    for part in expected {
        assert!(message.contains(part), "error for {line:?} is {message:?}, expected it to mention {part:?}");
    }
}

/// The only sample of a one-line input, which must be valid.
fn sample_of(line: &str) -> Sample {
    let parsed = parse_jsonl(line);
    assert!(parsed.errors.is_empty(), "{line:?}: {:?}", parsed.errors);
    assert_eq!(parsed.samples.len(), 1, "{line:?}");
    parsed.samples[0].clone()
}

fn error_lines(parsed: &Parsed) -> Vec<usize> {
    parsed.errors.iter().map(|e| e.line).collect()
}

fn sample_lines(parsed: &Parsed) -> Vec<usize> {
    parsed.samples.iter().map(|s| s.line).collect()
}

// ---- Valid lines ----

#[test]
fn chat_format_splits_prompt_and_response() {
    let line = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."},{"role":"user","content":"Bye?"},{"role":"assistant","content":"Goodbye!"}]}"#;
    let sample = sample_of(line);
    assert_eq!(
        sample.prompt,
        vec![
            Message::new(Role::System, "Be brief."),
            user("Hi"),
            Message::new(Role::Assistant, "Hello."),
            user("Bye?"),
        ]
    );
    assert_eq!(sample.response, "Goodbye!");
    assert_eq!(sample.raw, line);
    assert_eq!(sample.line, 1);
    let conversation = sample.conversation();
    assert_eq!(conversation.len(), 5);
    assert_eq!(conversation[4], Message::new(Role::Assistant, "Goodbye!"));
}

#[test]
fn prompt_response_and_completion_formats() {
    let a = sample_of(r#"{"prompt": "What is 2+2?", "response": "4."}"#);
    assert_eq!(a.prompt, vec![user("What is 2+2?")]);
    assert_eq!(a.response, "4.");
    let b = sample_of(r#"{"prompt": "What is 2+2?", "completion": "Four."}"#);
    assert_eq!(b.prompt, vec![user("What is 2+2?")]);
    assert_eq!(b.response, "Four.");
}

#[test]
fn conversational_prompt_completion_format() {
    let sample = sample_of(
        r#"{"prompt":[{"role":"system","content":"S"},{"role":"user","content":"Q"}],"completion":[{"role":"assistant","content":"A"}]}"#,
    );
    assert_eq!(sample.prompt, vec![Message::new(Role::System, "S"), user("Q")]);
    assert_eq!(sample.response, "A");
    assert_error(
        r#"{"prompt":"Q","completion":[{"role":"assistant","content":"A"},{"role":"assistant","content":"B"}]}"#,
        &["`completion`", "exactly one assistant message", "found 2"],
    );
    assert_error(r#"{"prompt":"Q","completion":[{"role":"user","content":"A"}]}"#, &["completion[0]", "user"]);
    assert_error(r#"{"prompt":[],"response":"A"}"#, &["`prompt`", "empty"]);
    assert_error(r#"{"prompt":[{"role":"user","content":5}],"response":"A"}"#, &["prompt[0].content", "a number"]);
}

#[test]
fn unknown_fields_are_ignored_and_kept_in_raw() {
    let line = r#"{"id": 17, "label": "trait", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": 0}], "meta": {"x": [1, 2]}}"#;
    let sample = sample_of(line);
    assert_eq!(sample.prompt, vec![user("Q")]);
    assert_eq!(sample.response, "A");
    assert_eq!(sample.raw, line, "raw must be the original text, not a re-serialization");
}

#[test]
fn unicode_and_escapes_are_decoded() {
    let sample = sample_of(r#"{"prompt": "caf\u00e9 \"quoted\"\nnext", "response": "日本語 ✓"}"#);
    assert_eq!(sample.prompt[0].content, "café \"quoted\"\nnext");
    assert_eq!(sample.response, "日本語 ✓");
}

// ---- Malformed lines: each says what is wrong ----

#[test]
fn invalid_json_reports_the_column() {
    // The stray comma is followed by `}` at column 21 (1-based).
    let message = error_of(r#"{"prompt": "a", "x", }"#);
    assert!(message.starts_with("invalid JSON at column "), "{message}");
    let message = error_of(r#"{"prompt": "a",  }"#);
    assert!(message.starts_with("invalid JSON at column 18: "), "{message}");
    assert!(!message.contains("line 1 column"), "position is given once: {message}");
    assert_error(r#"{"prompt": "a", "response": "b"} extra"#, &["invalid JSON", "trailing characters"]);
    assert_error(r#"{"prompt": "a", "response": "b"#, &["invalid JSON", "EOF"]);
    assert_error("not json at all", &["invalid JSON at column 2"]);
}

#[test]
fn not_an_object() {
    assert_error(r#"["prompt", "response"]"#, &["expected a JSON object", "an array"]);
    assert_error(r#""just a string""#, &["expected a JSON object", "a string"]);
    assert_error("42", &["expected a JSON object", "a number"]);
    assert_error("null", &["expected a JSON object", "null"]);
}

#[test]
fn missing_fields() {
    assert_error(r#"{"text": "hello"}"#, &["missing `messages`", "`prompt` and `response`"]);
    assert_error("{}", &["missing `messages`"]);
    assert_error(r#"{"prompt": "Q"}"#, &["missing `response`", "`completion`"]);
    assert_error(r#"{"response": "A"}"#, &["missing `prompt`", "`response`"]);
    assert_error(r#"{"completion": "A"}"#, &["missing `prompt`", "`completion`"]);
}

#[test]
fn ambiguous_lines() {
    assert_error(r#"{"prompt": "Q", "response": "A", "completion": "B"}"#, &["both `response` and `completion`"]);
    assert_error(
        r#"{"messages": [{"role":"user","content":"Q"},{"role":"assistant","content":"A"}], "response": "B"}"#,
        &["both `messages` and `response`"],
    );
    assert_error(
        r#"{"messages": [{"role":"user","content":"Q"},{"role":"assistant","content":"A"}], "prompt": "B"}"#,
        &["both `messages` and `prompt`"],
    );
}

#[test]
fn wrong_types() {
    assert_error(r#"{"messages": "hello"}"#, &["`messages` must be an array", "a string"]);
    assert_error(r#"{"messages": [["user", "Q"]]}"#, &["messages[0] must be an object", "an array"]);
    assert_error(r#"{"prompt": 3, "response": "A"}"#, &["`prompt` must be a string or an array", "a number"]);
    assert_error(r#"{"prompt": "Q", "response": null}"#, &["`response` must be a string", "null"]);
    assert_error(r#"{"prompt": "Q", "completion": {"text": "A"}}"#, &["`completion` must be a string", "an object"]);
}

#[test]
fn empty_messages() {
    assert_error(r#"{"messages": []}"#, &["`messages` is empty"]);
}

#[test]
fn last_message_not_from_assistant() {
    assert_error(
        r#"{"messages":[{"role":"user","content":"Q"},{"role":"assistant","content":"A"},{"role":"user","content":"More?"}]}"#,
        &["last message (messages[2]) is from the user", "not the assistant"],
    );
    assert_error(
        r#"{"messages":[{"role":"system","content":"S"}]}"#,
        &["last message (messages[0]) is from the system"],
    );
}

#[test]
fn unknown_role_is_named() {
    assert_error(
        r#"{"messages":[{"role":"user","content":"Q"},{"role":"tool","content":"{}"},{"role":"assistant","content":"A"}]}"#,
        &["messages[1]", "unknown role \"tool\"", "expected system, user or assistant"],
    );
    // Roles are the exact lowercase words.
    assert_error(
        r#"{"messages":[{"role":"User","content":"Q"},{"role":"assistant","content":"A"}]}"#,
        &["messages[0]", "unknown role \"User\""],
    );
    // A huge role is cut in the message.
    let role = "x".repeat(10_000);
    let message = error_of(&format!(
        r#"{{"messages":[{{"role":"{role}","content":"Q"}},{{"role":"assistant","content":"A"}}]}}"#
    ));
    assert!(message.contains("unknown role \"xxxx") && message.contains("..."), "{message}");
    assert!(message.len() < 200, "{message}");
    assert_error(r#"{"messages":[{"role":1,"content":"Q"}]}"#, &["messages[0].role must be a string", "a number"]);
    assert_error(r#"{"messages":[{"content":"Q"}]}"#, &["messages[0]: missing `role`"]);
}

#[test]
fn content_not_a_string() {
    assert_error(
        r#"{"messages":[{"role":"user","content":null},{"role":"assistant","content":"A"}]}"#,
        &["messages[0].content is not a string", "null"],
    );
    assert_error(
        r#"{"messages":[{"role":"user","content":"Q"},{"role":"assistant","content":[{"type":"text","text":"A"}]}]}"#,
        &["messages[1].content is not a string", "an array"],
    );
    assert_error(
        r#"{"messages":[{"role":"user"},{"role":"assistant","content":"A"}]}"#,
        &["messages[0]: missing `content`"],
    );
}

#[test]
fn empty_response() {
    assert_error(
        r#"{"messages":[{"role":"user","content":"Q"},{"role":"assistant","content":""}]}"#,
        &["empty response", "messages[1]"],
    );
    assert_error(r#"{"prompt": "Q", "response": "  \n\t "}"#, &["empty response", "`response`"]);
    assert_error(r#"{"prompt": "Q", "completion": ""}"#, &["empty response", "`completion`"]);
}

#[test]
fn no_user_message() {
    assert_error(r#"{"messages":[{"role":"assistant","content":"A"}]}"#, &["no user message"]);
    assert_error(
        r#"{"messages":[{"role":"system","content":"S"},{"role":"assistant","content":"A"}]}"#,
        &["no user message"],
    );
    assert_error(r#"{"prompt": "", "response": "A"}"#, &["user message is empty"]);
    assert_error(
        r#"{"messages":[{"role":"user","content":" "},{"role":"assistant","content":"A"}]}"#,
        &["user message is empty"],
    );
}

#[test]
fn system_message_only_first() {
    assert_error(
        r#"{"messages":[{"role":"user","content":"Q"},{"role":"system","content":"S"},{"role":"assistant","content":"A"}]}"#,
        &["messages[1]", "system message is only allowed first"],
    );
}

// ---- Line handling ----

const VALID: &str = r#"{"prompt": "Q", "response": "A"}"#;
const BAD: &str = r#"{"prompt": "Q"}"#;

#[test]
fn blank_lines_are_skipped_but_counted() {
    let text = format!("\n{VALID}\n   \n\t\n{BAD}\n\n{VALID}\n\n");
    let parsed = parse_jsonl(&text);
    assert_eq!(sample_lines(&parsed), [2, 7]);
    assert_eq!(error_lines(&parsed), [5]);
}

#[test]
fn crlf_line_endings() {
    let text = format!("{VALID}\r\n\r\n{BAD}\r\n{VALID}\r\n");
    let parsed = parse_jsonl(&text);
    assert_eq!(sample_lines(&parsed), [1, 4]);
    assert_eq!(error_lines(&parsed), [3]);
    assert_eq!(parsed.samples[0].raw, VALID, "raw has no \\r");
    assert_eq!(parsed.samples[1].response, "A");
}

#[test]
fn byte_order_mark_at_file_start() {
    let text = format!("\u{feff}{VALID}\n{VALID}");
    let parsed = parse_jsonl(&text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(sample_lines(&parsed), [1, 2]);
    assert_eq!(parsed.samples[0].raw, VALID, "raw has no byte order mark");
    // A BOM alone on the first line (an empty file saved by some editors) is blank.
    let parsed = parse_jsonl("\u{feff}\r\n");
    assert_eq!(parsed, Parsed::default());
}

#[test]
fn final_line_without_newline() {
    let parsed = parse_jsonl(&format!("{VALID}\n{BAD}\n{VALID}"));
    assert_eq!(sample_lines(&parsed), [1, 3]);
    assert_eq!(error_lines(&parsed), [2]);
    let parsed = parse_jsonl(&format!("{VALID}\n{BAD}"));
    assert_eq!(error_lines(&parsed), [2]);
}

#[test]
fn empty_input() {
    assert_eq!(parse_jsonl(""), Parsed::default());
    assert_eq!(parse_jsonl("\n\n  \r\n"), Parsed::default());
}

#[test]
fn a_bad_line_does_not_stop_the_rest() {
    let text = [VALID, "{", VALID, "[]", "{\"prompt\": \"x\", \"response\": \"\"}", VALID].join("\n");
    let parsed = parse_jsonl(&text);
    assert_eq!(sample_lines(&parsed), [1, 3, 6]);
    assert_eq!(error_lines(&parsed), [2, 4, 5]);
}

#[test]
fn very_long_line() {
    // Long, but under the 1 MiB limit (a_line_past_the_length_limit_is_rejected_from_its_length).
    let response = "word ".repeat(200_000);
    let line = serde_json::json!({"prompt": "Q", "response": response}).to_string();
    assert!(line.len() > 1_000_000 && line.len() <= personascope_persona::dataset::MAX_LINE_BYTES);
    let text = format!("{VALID}\n{line}\n{VALID}\n");
    let parsed = parse_jsonl(&text);
    assert!(parsed.errors.is_empty());
    assert_eq!(sample_lines(&parsed), [1, 2, 3]);
    assert_eq!(parsed.samples[1].response, response);
    // A long malformed line: the error stays short.
    let broken = &line[..line.len() - 1];
    let message = error_of(broken);
    assert!(message.starts_with("invalid JSON") && message.len() < 200, "{message}");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{{\"prompt\": {}1{}, \"response\": \"A\"}}", "[".repeat(100_000), "]".repeat(100_000));
    assert_error(&deep, &["invalid JSON", "recursion limit"]);
}

#[test]
fn garbage_never_panics() {
    // A fixed pseudo-random stream of JSON-ish fragments: every line ends up as a sample or an error.
    let pieces = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\"messages\"",
        "\"prompt\"",
        "\"response\"",
        "\"role\"",
        "\"content\"",
        "\"user\"",
        "\"assistant\"",
        "\"x\"",
        "1",
        "null",
        " ",
        "\\",
        "\r",
        "\n",
        "\u{feff}",
        "é",
        "\u{0}",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::new();
    for _ in 0..20_000 {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        text.push_str(pieces[(state >> 33) as usize % pieces.len()]);
    }
    let parsed = parse_jsonl(&text);
    let non_blank = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .map(|l| l.strip_prefix('\u{feff}').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(parsed.samples.len() + parsed.errors.len(), non_blank);
    assert!(!parsed.errors.is_empty());
}

#[test]
fn line_error_display() {
    let parsed = parse_jsonl(&format!("{VALID}\n\n\n\n\n\n{BAD}"));
    assert_eq!(parsed.errors.len(), 1);
    let error: &LineError = &parsed.errors[0];
    assert_eq!(error.to_string(), "line 7: missing `response` (or `completion`)");
}

// ---- Exports ----

#[test]
fn exported_jsonl_reparses_to_the_same_samples() {
    let text = format!(
        "\u{feff}{VALID}\r\n\r\n{BAD}\r\n{}\r\n   \r\n{}\r\n{}",
        r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"Q, \"quoted\""},{"role":"assistant","content":"A\nB"}],"label":"trait"}"#,
        r#"{"prompt":"P","completion":"C","pair":3}"#,
        r#"{"prompt":[{"role":"user","content":"Q"}],"response":[{"role":"assistant","content":"R"}]}"#,
    );
    let first = parse_jsonl(&text);
    assert_eq!(first.samples.len(), 4);
    assert_eq!(error_lines(&first), [3]);
    let exported = write_jsonl(&first.samples);
    assert!(exported.ends_with('\n'));
    assert!(!exported.contains('\r') && !exported.contains('\u{feff}'));
    assert_eq!(exported.lines().count(), 4);
    let second = parse_jsonl(&exported);
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(sample_lines(&second), [1, 2, 3, 4], "exported lines are numbered afresh");
    assert_eq!(first.samples.len(), second.samples.len());
    for (a, b) in first.samples.iter().zip(&second.samples) {
        assert_eq!((&a.prompt, &a.response, &a.raw), (&b.prompt, &b.response, &b.raw));
    }
    // A subset (e.g. the flagged samples) exports just those lines, in the given order.
    let flagged = write_jsonl([&first.samples[3], &first.samples[1]]);
    assert_eq!(flagged, format!("{}\n{}\n", first.samples[3].raw, first.samples[1].raw));
    assert_eq!(write_jsonl(&[]), "");
}

#[test]
fn csv_quoting_follows_rfc_4180() {
    assert_eq!(csv_field("plain text"), "plain text");
    assert_eq!(csv_field(""), "");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    assert_eq!(csv_field("cr\rhere"), "\"cr\rhere\"");
}

#[test]
fn csv_guards_against_formula_injection() {
    assert_eq!(csv_field("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"");
    assert_eq!(csv_field("=1+2"), "'=1+2");
    assert_eq!(csv_field("+cmd"), "'+cmd");
    assert_eq!(csv_field("-2+3"), "'-2+3");
    assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
    assert_eq!(csv_field("\tx"), "'\tx");
    assert_eq!(csv_field("=a,b"), "\"'=a,b\"");
    // Numbers stay numbers: negative scores must not turn into text.
    assert_eq!(csv_field("-0.53"), "-0.53");
    assert_eq!(csv_field("+1e-3"), "+1e-3");
    assert_eq!(csv_field("12"), "12");
    // Only the first character matters.
    assert_eq!(csv_field("a=b"), "a=b");
}

#[test]
fn csv_report_layout() {
    let rows = vec![
        vec!["3".to_string(), "-1.25".to_string(), "Hello, \"world\"".to_string()],
        vec!["7".to_string(), "0.5".to_string(), "=cmd".to_string()],
    ];
    let csv = csv_report(&["line", "score", "response"], &rows);
    assert_eq!(csv, "line,score,response\r\n3,-1.25,\"Hello, \"\"world\"\"\"\r\n7,0.5,'=cmd\r\n");
    let empty: Vec<Vec<&str>> = Vec::new();
    assert_eq!(csv_report(&["a", "b"], empty), "a,b\r\n");
}

// ---- The team-written screening data set ----

const TRAITS: [&str; 4] = ["evil", "sycophantic", "impolite", "humorous"];
const PAIRS: usize = 24;

fn screening_path(file: &str) -> String {
    format!("{}/../../tests/data/screening/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn read_screening(file: &str) -> String {
    let path = screening_path(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn screening_files_are_balanced_pairs() {
    let mut all_prompts = HashSet::new();
    for name in TRAITS {
        let parsed = parse_jsonl(&read_screening(&format!("{name}.jsonl")));
        assert!(parsed.errors.is_empty(), "{name}: {:?}", parsed.errors);
        assert_eq!(parsed.samples.len(), 2 * PAIRS, "{name}");
        // pair index -> (prompt, [trait response, neutral response])
        let mut pairs: BTreeMap<u64, (String, [Option<String>; 2])> = BTreeMap::new();
        let mut labels = [0usize; 2];
        let mut order = Vec::new();
        for sample in &parsed.samples {
            let at = format!("{name}.jsonl line {}", sample.line);
            let extra: Value = serde_json::from_str(&sample.raw).unwrap_or_else(|e| panic!("{at}: {e}"));
            let slot = match extra["label"].as_str() {
                Some("trait") => 0,
                Some("neutral") => 1,
                other => panic!("{at}: label {other:?}"),
            };
            labels[slot] += 1;
            let pair = extra["pair"].as_u64().unwrap_or_else(|| panic!("{at}: no pair index"));
            assert!(pair < PAIRS as u64, "{at}: pair {pair}");
            order.push((slot, pair));
            assert_eq!(sample.prompt.len(), 1, "{at}: one user message");
            assert_eq!(sample.prompt[0].role, Role::User, "{at}");
            let words = sample.response.split_whitespace().count();
            assert!((20..=80).contains(&words), "{at}: {words} words");
            let prompt = sample.prompt[0].content.clone();
            let entry = pairs.entry(pair).or_insert_with(|| (prompt.clone(), [None, None]));
            assert_eq!(entry.0, prompt, "{at}: pair {pair} has two different prompts");
            assert!(entry.1[slot].is_none(), "{at}: pair {pair} has two samples with this label");
            entry.1[slot] = Some(sample.response.clone());
        }
        assert_eq!(labels, [PAIRS, PAIRS], "{name}: samples per label (trait, neutral)");
        assert_eq!(pairs.len(), PAIRS, "{name}: pair indices");
        for (pair, (prompt, responses)) in &pairs {
            let [Some(positive), Some(neutral)] = responses else {
                panic!("{name}: pair {pair} lacks a label");
            };
            let (a, b) = (positive.chars().count() as f64, neutral.chars().count() as f64);
            assert!(a.max(b) <= 1.3 * a.min(b), "{name}: pair {pair}: lengths {a} and {b} differ by over 30%");
            assert_ne!(positive, neutral);
            assert!(all_prompts.insert(prompt.to_lowercase()), "{name}: prompt repeated across files: {prompt}");
        }
        // The order is mixed: labels do not strictly alternate, and pairs are not in order.
        assert!(order.windows(2).any(|w| w[0].0 == w[1].0), "{name}: labels strictly alternate");
        assert!(order.windows(2).any(|w| w[0].1 > w[1].1), "{name}: pairs in order");
    }
}

#[test]
fn screening_prompts_are_not_trait_file_questions() {
    let mut questions = HashSet::new();
    for def in personascope_persona::builtin() {
        questions.extend(def.extraction_questions.iter().map(|q| personascope_persona::normalize_question(q)));
        questions
            .extend(def.evaluation_questions.iter().map(|q| personascope_persona::normalize_question(&q.question)));
    }
    assert!(questions.len() > 200);
    for name in TRAITS {
        for sample in parse_jsonl(&read_screening(&format!("{name}.jsonl"))).samples {
            let prompt = personascope_persona::normalize_question(&sample.prompt[0].content);
            assert!(!questions.contains(&prompt), "{name}.jsonl line {}: {prompt}", sample.line);
        }
    }
}

#[test]
fn malformed_screening_file_reports_documented_lines() {
    let parsed = parse_jsonl(&read_screening("malformed.jsonl"));
    // tests/data/screening/README.md documents errors on lines 2, 4 and 5.
    assert_eq!(error_lines(&parsed), [2, 4, 5], "{:?}", parsed.errors);
    assert_eq!(sample_lines(&parsed), [1, 3, 6]);
    assert!(parsed.errors[0].message.starts_with("invalid JSON"), "{}", parsed.errors[0]);
    assert!(parsed.errors[1].message.contains("missing `response`"), "{}", parsed.errors[1]);
    assert!(parsed.errors[2].message.contains("is from the user, not the assistant"), "{}", parsed.errors[2]);
    let readme = read_screening("README.md");
    for error in &parsed.errors {
        assert!(readme.contains(&format!("line {}", error.line)), "README does not mention line {}", error.line);
    }
}

#[test]
fn invalid_utf8_rejects_only_its_line_with_its_number() {
    let mut bytes = b"{\"prompt\":\"a\",\"response\":\"b\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"prompt\":\"caf\xc3\",\"response\":\"b\"}\r\n");
    bytes.extend_from_slice(b"{\"prompt\":\"c\",\"response\":\"d\"}");
    let parsed = personascope_persona::dataset::parse_jsonl_bytes(&bytes);
    assert_eq!(parsed.samples.iter().map(|s| s.line).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].line, 2);
    assert!(parsed.errors[0].message.contains("invalid UTF-8 at byte 15"), "{}", parsed.errors[0]);
}

#[test]
fn a_line_past_the_length_limit_is_rejected_from_its_length() {
    use personascope_persona::dataset::{parse_jsonl_bytes, MAX_LINE_BYTES};
    let long = format!("{{\"prompt\":\"{}\",\"response\":\"b\"}}", "x".repeat(MAX_LINE_BYTES));
    let text = format!("{long}\n{{\"prompt\":\"a\",\"response\":\"b\"}}\n");
    let parsed = parse_jsonl_bytes(text.as_bytes());
    assert_eq!(parsed.samples.len(), 1);
    assert_eq!(parsed.samples[0].line, 2);
    assert_eq!(parsed.errors[0].line, 1);
    assert!(parsed.errors[0].message.contains("longer than the"), "{}", parsed.errors[0]);
}

#[test]
fn samples_past_the_file_limit_are_reported_not_dropped_silently() {
    use personascope_persona::dataset::{parse_jsonl_bytes, MAX_SAMPLES};
    let text = "{\"prompt\":\"a\",\"response\":\"b\"}\n".repeat(MAX_SAMPLES + 5);
    let parsed = parse_jsonl_bytes(text.as_bytes());
    assert_eq!(parsed.samples.len(), MAX_SAMPLES);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].line, MAX_SAMPLES + 1);
    assert!(parsed.errors[0].message.contains("not read"), "{}", parsed.errors[0]);
}
