//! The built-in trait files, and the errors for each kind of invalid definition.

use std::collections::HashSet;

use personascope_persona::{
    article, builtin, builtin_by_name, library::builtin_source, normalize_question, parse, TraitError, BUILTIN_NAMES,
    MIN_EVALUATION_QUESTIONS, MIN_EXTRACTION_QUESTIONS, MIN_INSTRUCTIONS,
};
use serde_json::{json, Value};

#[test]
fn every_builtin_parses_and_validates() {
    let all = builtin();
    assert_eq!(all.len(), BUILTIN_NAMES.len());
    for (def, name) in all.iter().zip(BUILTIN_NAMES) {
        assert_eq!(def.name, name, "trait name must match its file name traits/{name}.json");
        assert!(def.instructions.len() >= MIN_INSTRUCTIONS, "{name}");
        assert!(def.extraction_questions.len() >= MIN_EXTRACTION_QUESTIONS, "{name}");
        assert!(def.evaluation_questions.len() >= MIN_EVALUATION_QUESTIONS, "{name}");
        let extraction: HashSet<String> = def.extraction_questions.iter().map(|q| normalize_question(q)).collect();
        assert_eq!(extraction.len(), def.extraction_questions.len(), "{name}: repeated extraction question");
        for item in &def.evaluation_questions {
            assert!(!extraction.contains(&normalize_question(&item.question)), "{name}: {}", item.question);
        }
        println!(
            "{name}: {} instruction pairs, {} extraction questions, {} evaluation questions",
            def.instructions.len(),
            def.extraction_questions.len(),
            def.evaluation_questions.len()
        );
    }
}

/// Reference answers stay short (one or two sentences), so that a 135M-parameter model's likelihood of them
/// reflects the trait rather than length.
#[test]
fn builtin_reference_answers_are_short() {
    for def in builtin() {
        for (i, item) in def.evaluation_questions.iter().enumerate() {
            for answer in [&item.consistent, &item.inconsistent] {
                let words: Vec<&str> = answer.split_whitespace().collect();
                let sentences = words.iter().filter(|w| w.ends_with(['.', '!', '?'])).count();
                assert!(sentences <= 2 && answer.len() <= 160, "{}: evaluation_questions[{i}]: {answer}", def.name);
            }
        }
    }
}

#[test]
fn builtin_by_name_finds_each_and_only_those() {
    for name in BUILTIN_NAMES {
        assert_eq!(builtin_by_name(name).unwrap().name, name);
        assert!(builtin_source(name).is_some());
    }
    assert!(builtin_by_name("grumpy").is_none());
    assert!(builtin_by_name("Evil").is_none());
}

#[test]
fn builtin_files_on_disk_are_the_embedded_ones() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traits");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = BUILTIN_NAMES.iter().map(|n| format!("{n}.json")).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "every file in traits/ must be registered in src/library.rs");
    for name in BUILTIN_NAMES {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        assert_eq!(text, builtin_source(name).unwrap());
    }
}

#[test]
fn definitions_round_trip_through_serde() {
    for def in builtin() {
        let text = serde_json::to_string_pretty(&def).unwrap();
        assert_eq!(parse(&text).unwrap(), def);
    }
}

#[test]
fn system_prompt_uses_the_right_article_and_instruction() {
    let evil = builtin_by_name("evil").unwrap();
    assert_eq!(
        evil.system_prompt(2, true).unwrap(),
        format!("You are an evil assistant. {}", evil.instructions[2].pos)
    );
    assert_eq!(
        evil.system_prompt(2, false).unwrap(),
        format!("You are a helpful assistant. {}", evil.instructions[2].neg)
    );
    let optimistic = builtin_by_name("optimistic").unwrap();
    assert!(optimistic.system_prompt(0, true).unwrap().starts_with("You are an optimistic assistant. "));
    assert!(optimistic.system_prompt(0, false).unwrap().starts_with("You are a pessimistic assistant. "));
    let impolite = builtin_by_name("impolite").unwrap();
    assert!(impolite.system_prompt(4, true).unwrap().starts_with("You are an impolite assistant. "));
    let apathetic = builtin_by_name("apathetic").unwrap();
    assert!(apathetic.system_prompt(1, true).unwrap().starts_with("You are an apathetic assistant. "));
    let humorous = builtin_by_name("humorous").unwrap();
    assert!(humorous.system_prompt(3, true).unwrap().starts_with("You are a humorous assistant. "));
    for (word, expected) in [("evil", "an"), ("Upbeat", "an"), ("obnoxious", "an"), ("sad", "a"), ("", "a")] {
        assert_eq!(article(word), expected, "{word:?}");
    }
}

#[test]
fn system_prompt_past_the_last_pair_is_none() {
    assert_eq!(builtin_by_name("evil").unwrap().system_prompt(5, true), None);
}

// ---- Invalid definitions, each made by mutating a valid one ----

fn valid() -> Value {
    serde_json::from_str(builtin_source("humorous").unwrap()).unwrap()
}

/// Applies `mutate` to a valid definition and returns the error message.
fn error_after(mutate: impl FnOnce(&mut Value)) -> (TraitError, String) {
    let mut v = valid();
    mutate(&mut v);
    let err = parse(&v.to_string()).expect_err("mutated definition must be rejected");
    let message = err.to_string();
    (err, message)
}

fn message_after(mutate: impl FnOnce(&mut Value)) -> String {
    error_after(mutate).1
}

#[test]
fn the_valid_base_parses() {
    parse(&valid().to_string()).unwrap();
}

#[test]
fn syntax_errors_give_line_and_column() {
    let err = parse("{\n  \"name\": \"evil\",\n  \"description\" \"x\"\n}").unwrap_err();
    match &err {
        TraitError::Syntax { line, column, .. } => {
            assert_eq!(*line, 3);
            assert!(*column > 1);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert_eq!(err.to_string(), "JSON syntax error at line 3, column 17: expected `:`");
    assert_eq!(err.field(), None);
}

#[test]
fn unknown_fields_are_named() {
    let (err, msg) = error_after(|v| v["author"] = json!("me"));
    assert_eq!(msg, "(root): unknown field `author`");
    assert_eq!(err, TraitError::UnknownField { path: "(root)".into(), field: "author".into() });
    assert_eq!(message_after(|v| v["instructions"][2]["weight"] = json!(1)), "instructions[2]: unknown field `weight`");
    assert_eq!(
        message_after(|v| v["evaluation_questions"][7]["score"] = json!(3)),
        "evaluation_questions[7]: unknown field `score`"
    );
}

#[test]
fn missing_fields_are_named() {
    assert_eq!(message_after(|v| drop(v.as_object_mut().unwrap().remove("description"))), "description: missing");
    assert_eq!(
        message_after(|v| drop(v["instructions"][1].as_object_mut().unwrap().remove("neg"))),
        "instructions[1].neg: missing"
    );
    assert_eq!(
        message_after(|v| drop(v["evaluation_questions"][0].as_object_mut().unwrap().remove("consistent"))),
        "evaluation_questions[0].consistent: missing"
    );
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(message_after(|v| v["name"] = json!(7)), "name: expected a string, found a number");
    assert_eq!(message_after(|v| v["instructions"] = json!({})), "instructions: expected an array, found an object");
    assert_eq!(
        message_after(|v| v["extraction_questions"][3] = json!(null)),
        "extraction_questions[3]: expected a string, found null"
    );
    assert_eq!(
        message_after(|v| v["evaluation_questions"][2] = json!("just a question?")),
        "evaluation_questions[2]: expected an object, found a string"
    );
    assert_eq!(message_after(|v| *v = json!([])), "(root): expected an object, found an array");
}

#[test]
fn names_must_be_lowercase_identifiers() {
    for bad in ["Evil", "evil trait", "9lives", "", "évil", "evil-ish"] {
        let msg = message_after(|v| v["name"] = json!(bad));
        assert!(msg.starts_with("name: ") && msg.contains("lowercase identifier"), "{bad:?}: {msg}");
    }
    for good in ["evil", "evil_2", "a"] {
        let mut v = valid();
        v["name"] = json!(good);
        parse(&v.to_string()).unwrap();
    }
}

#[test]
fn single_line_fields() {
    assert_eq!(message_after(|v| v["description"] = json!("  ")), "description: is empty");
    assert_eq!(message_after(|v| v["description"] = json!("two\nlines")), "description: must be a single line");
    assert_eq!(message_after(|v| v["positive_adjective"] = json!("")), "positive_adjective: is empty");
    assert_eq!(
        message_after(|v| v["negative_adjective"] = json!("serious ")),
        "negative_adjective: has leading or trailing whitespace"
    );
    assert_eq!(
        message_after(|v| v["negative_adjective"] = json!("humorous")),
        "negative_adjective: is the same as positive_adjective"
    );
}

#[test]
fn empty_texts_are_named() {
    assert_eq!(message_after(|v| v["instructions"][3]["neg"] = json!("")), "instructions[3].neg: is empty");
    assert_eq!(message_after(|v| v["instructions"][0]["pos"] = json!(" \t")), "instructions[0].pos: is empty");
    assert_eq!(message_after(|v| v["extraction_questions"][11] = json!("")), "extraction_questions[11]: is empty");
    assert_eq!(
        message_after(|v| v["evaluation_questions"][5]["question"] = json!("")),
        "evaluation_questions[5].question: is empty"
    );
    assert_eq!(
        message_after(|v| v["evaluation_questions"][5]["inconsistent"] = json!("\n")),
        "evaluation_questions[5].inconsistent: is empty"
    );
}

#[test]
fn identical_contrasts_are_rejected() {
    assert_eq!(
        message_after(|v| v["instructions"][1]["neg"] = v["instructions"][1]["pos"].clone()),
        "instructions[1].neg: is the same as pos"
    );
    assert_eq!(
        message_after(|v| {
            let c = v["evaluation_questions"][9]["consistent"].as_str().unwrap().to_uppercase();
            v["evaluation_questions"][9]["inconsistent"] = json!(c);
        }),
        "evaluation_questions[9].inconsistent: is the same as consistent"
    );
}

#[test]
fn too_few_entries_are_counted() {
    assert_eq!(
        message_after(|v| v["instructions"].as_array_mut().unwrap().truncate(4)),
        "instructions: 4 given, at least 5 required"
    );
    assert_eq!(
        message_after(|v| v["extraction_questions"].as_array_mut().unwrap().truncate(19)),
        "extraction_questions: 19 given, at least 20 required"
    );
    assert_eq!(
        message_after(|v| v["evaluation_questions"].as_array_mut().unwrap().truncate(12)),
        "evaluation_questions: 12 given, at least 20 required"
    );
    assert_eq!(
        message_after(|v| v["evaluation_questions"] = json!([])),
        "evaluation_questions: 0 given, at least 20 required"
    );
}

#[test]
fn overlap_between_extraction_and_evaluation_is_found_after_normalizing() {
    let (err, msg) = error_after(|v| {
        let q = v["extraction_questions"][7].as_str().unwrap();
        let shouted = format!("  {}  ", q.to_uppercase().replace(' ', "   "));
        v["evaluation_questions"][4]["question"] = json!(shouted);
    });
    assert_eq!(msg, "evaluation_questions[4].question: also appears in extraction_questions[7]");
    assert_eq!(err.field(), Some("evaluation_questions[4].question"));
}

#[test]
fn repeated_questions_are_rejected() {
    assert_eq!(
        message_after(|v| v["extraction_questions"][15] = json!(v["extraction_questions"][2].as_str().unwrap())),
        "extraction_questions[15]: repeats extraction_questions[2]"
    );
    assert_eq!(
        message_after(|v| {
            v["evaluation_questions"][6]["question"] = v["evaluation_questions"][1]["question"].clone();
        }),
        "evaluation_questions[6].question: repeats evaluation_questions[1].question"
    );
}

#[test]
fn normalize_question_collapses_case_and_whitespace() {
    assert_eq!(normalize_question("  How   are\tYOU?\n"), "how are you?");
}

#[test]
fn too_many_or_too_long_entries_are_refused() {
    use personascope_persona::{MAX_INSTRUCTIONS, MAX_QUESTIONS, MAX_TEXT_BYTES, MAX_TRAIT_FILE_BYTES};
    // A million questions was accepted before the limits.
    let many: Vec<Value> = (0..MAX_QUESTIONS + 1).map(|i| json!(format!("Question number {i}?"))).collect();
    assert_eq!(
        message_after(|v| v["extraction_questions"] = json!(many)),
        format!("extraction_questions: {} given, at most {MAX_QUESTIONS} accepted", MAX_QUESTIONS + 1)
    );
    let pairs: Vec<Value> = (0..MAX_INSTRUCTIONS + 1)
        .map(|i| json!({"pos": format!("Be rude {i}."), "neg": format!("Be kind {i}.")}))
        .collect();
    assert_eq!(
        message_after(|v| v["instructions"] = json!(pairs)),
        format!("instructions: {} given, at most {MAX_INSTRUCTIONS} accepted", MAX_INSTRUCTIONS + 1)
    );
    let long = "y".repeat(MAX_TEXT_BYTES + 1);
    assert_eq!(
        message_after(|v| v["instructions"][2]["neg"] = json!(long)),
        format!("instructions[2].neg: is {} bytes, more than the {MAX_TEXT_BYTES} accepted", MAX_TEXT_BYTES + 1)
    );
    let huge = " ".repeat(MAX_TRAIT_FILE_BYTES + 1);
    assert!(parse(&huge).expect_err("too big").to_string().contains("more than"));
}
