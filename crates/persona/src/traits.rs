//! Trait definitions: the JSON format, its validation and the extraction system prompt.
//!
//! # Format
//!
//! A trait definition is one JSON object with exactly these fields (unknown fields are rejected):
//!
//! ```json
//! {
//!   "name": "evil",
//!   "description": "one line saying what the trait is",
//!   "positive_adjective": "evil",
//!   "negative_adjective": "helpful",
//!   "instructions": [{"pos": "show the trait ...", "neg": "avoid the trait ..."}],
//!   "extraction_questions": ["..."],
//!   "evaluation_questions": [
//!     {"question": "...", "consistent": "trait-consistent reference answer", "inconsistent": "..."}
//!   ]
//! }
//! ```
//!
//! Rules checked by [`parse`]:
//!
//! - `name` is a lowercase identifier: an ASCII letter `a-z` followed by `a-z`, `0-9` or `_`.
//! - `description` is one non-empty line.
//! - `positive_adjective` and `negative_adjective` are non-empty, single-line, without surrounding whitespace,
//!   and different from each other.
//! - `instructions` has at least [`MIN_INSTRUCTIONS`] pairs; each `pos` and `neg` is non-empty and they differ.
//! - `extraction_questions` has at least [`MIN_EXTRACTION_QUESTIONS`] non-empty questions, no two the same.
//! - `evaluation_questions` has at least [`MIN_EVALUATION_QUESTIONS`] entries, each with a non-empty `question`,
//!   `consistent` and `inconsistent` answer (the two answers differ); no two questions are the same.
//! - No evaluation question is also an extraction question.
//! - Upper limits: at most [`MAX_INSTRUCTIONS`] pairs and [`MAX_QUESTIONS`] questions of each kind, each text at
//!   most [`MAX_TEXT_BYTES`], the file at most [`MAX_TRAIT_FILE_BYTES`].
//!
//! Questions are compared after [`normalize_question`] (lowercase, runs of whitespace collapsed to one space,
//! surrounding whitespace removed).
//!
//! Every error names the field it is about, as a path such as `instructions[3].neg`; see [`TraitError`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Fewest instruction pairs a definition may have (the paper uses 5).
pub const MIN_INSTRUCTIONS: usize = 5;
/// Upper limits: far above what extraction uses (the built-in traits have 5 pairs and 40 questions), low enough
/// that a hostile or mistaken file cannot queue days of work or gigabytes of prompts.
pub const MAX_INSTRUCTIONS: usize = 100;
pub const MAX_QUESTIONS: usize = 2_000;
/// The longest accepted text field, and trait file.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
pub const MAX_TRAIT_FILE_BYTES: usize = 8 << 20;
/// Fewest extraction questions a definition may have (the paper uses 20).
pub const MIN_EXTRACTION_QUESTIONS: usize = 20;
/// Fewest evaluation questions a definition may have (the paper uses 20).
pub const MIN_EVALUATION_QUESTIONS: usize = 20;

/// One contrasting pair of system instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct InstructionPair {
    /// Tells the model to show the trait strongly.
    pub pos: String,
    /// Tells the model to avoid the trait and do the opposite.
    pub neg: String,
}

/// A held-out question with two short reference answers, for judge-free evaluation
/// (e.g. paired-continuation log-odds: how much more likely the model finds the consistent answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct EvaluationQuestion {
    /// The user's question.
    pub question: String,
    /// A short answer that shows the trait.
    pub consistent: String,
    /// A short answer that shows the opposite of the trait.
    pub inconsistent: String,
}

/// A validated trait definition. Build one with [`parse`]; see the [module documentation](self) for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct TraitDefinition {
    /// Lowercase identifier, e.g. `evil`.
    pub name: String,
    /// One line describing the trait.
    pub description: String,
    /// Adjective in the positive system prompt ("You are an evil assistant.").
    pub positive_adjective: String,
    /// Adjective in the negative system prompt ("You are a helpful assistant.").
    pub negative_adjective: String,
    /// Contrasting system instructions (at least [`MIN_INSTRUCTIONS`]).
    pub instructions: Vec<InstructionPair>,
    /// Questions used to extract the trait vector (at least [`MIN_EXTRACTION_QUESTIONS`]).
    pub extraction_questions: Vec<String>,
    /// Held-out questions with reference answers (at least [`MIN_EVALUATION_QUESTIONS`]).
    pub evaluation_questions: Vec<EvaluationQuestion>,
}

/// Why a trait definition was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraitError {
    /// The text is not valid JSON.
    #[error("JSON syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the JSON parser reported.
        message: String,
    },
    /// An object has a field the format does not know.
    #[error("{path}: unknown field `{field}`")]
    UnknownField {
        /// The object holding the field (`(root)` for the top level).
        path: String,
        /// The unknown field's name.
        field: String,
    },
    /// A required field is absent.
    #[error("{field}: missing")]
    Missing {
        /// Path of the missing field, e.g. `instructions[2].neg`.
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("{field}: expected {expected}, found {found}")]
    WrongType {
        /// Path of the field.
        field: String,
        /// The JSON type required.
        expected: &'static str,
        /// The JSON type given.
        found: &'static str,
    },
    /// A field is present with the right type but breaks a rule.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `evaluation_questions[4].question`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TraitError {
    /// The path of the field this error is about (`None` for a JSON syntax error).
    pub fn field(&self) -> Option<&str> {
        match self {
            TraitError::Syntax { .. } => None,
            TraitError::UnknownField { path, .. } => Some(path),
            TraitError::Missing { field } | TraitError::WrongType { field, .. } | TraitError::Invalid { field, .. } => {
                Some(field)
            }
        }
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TraitError::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// Parses and validates a trait definition. The first problem found is returned, naming its field.
pub fn parse(json: &str) -> Result<TraitDefinition, TraitError> {
    if json.len() > MAX_TRAIT_FILE_BYTES {
        return Err(TraitError::invalid(
            "(file)",
            format!("is {} bytes, more than the {MAX_TRAIT_FILE_BYTES} accepted", json.len()),
        ));
    }
    let value: Value = serde_json::from_str(json).map_err(|e| TraitError::Syntax {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })?;
    let def = from_value(&value)?;
    def.validate()?;
    Ok(def)
}

/// The form in which questions are compared: lowercase, whitespace runs collapsed to one space, trimmed.
pub fn normalize_question(question: &str) -> String {
    question.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// The indefinite article for `word`, chosen by its first letter: `an` before a vowel (a, e, i, o, u), else `a`.
pub fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

impl TraitDefinition {
    /// The extraction system prompt for instruction pair `pair`:
    /// `"You are {a|an} {adjective} assistant. " + instruction`, with the positive adjective and `pos` instruction
    /// when `positive`, else the negative adjective and `neg` instruction (docs/method.md §2). `None`
    /// when the trait has no pair `pair` (this is reachable from user input, so it must not panic).
    pub fn system_prompt(&self, pair: usize, positive: bool) -> Option<String> {
        let instruction = self.instructions.get(pair)?;
        let (adjective, text) = if positive {
            (&self.positive_adjective, &instruction.pos)
        } else {
            (&self.negative_adjective, &instruction.neg)
        };
        Some(format!("You are {} {adjective} assistant. {text}", article(adjective)))
    }

    /// Checks every rule of the format (see the [module documentation](self)).
    pub fn validate(&self) -> Result<(), TraitError> {
        check_name(&self.name)?;
        check_line("description", &self.description)?;
        check_adjective("positive_adjective", &self.positive_adjective)?;
        check_adjective("negative_adjective", &self.negative_adjective)?;
        if self.positive_adjective == self.negative_adjective {
            return Err(TraitError::invalid("negative_adjective", "is the same as positive_adjective"));
        }

        check_count("instructions", self.instructions.len(), MIN_INSTRUCTIONS)?;
        for (i, pair) in self.instructions.iter().enumerate() {
            check_text(&format!("instructions[{i}].pos"), &pair.pos)?;
            check_text(&format!("instructions[{i}].neg"), &pair.neg)?;
            if normalize_question(&pair.pos) == normalize_question(&pair.neg) {
                return Err(TraitError::invalid(format!("instructions[{i}].neg"), "is the same as pos"));
            }
        }

        check_count("extraction_questions", self.extraction_questions.len(), MIN_EXTRACTION_QUESTIONS)?;
        let mut extraction: HashMap<String, usize> = HashMap::new();
        for (i, q) in self.extraction_questions.iter().enumerate() {
            let field = format!("extraction_questions[{i}]");
            check_text(&field, q)?;
            if let Some(first) = extraction.insert(normalize_question(q), i) {
                return Err(TraitError::invalid(field, format!("repeats extraction_questions[{first}]")));
            }
        }

        check_count("evaluation_questions", self.evaluation_questions.len(), MIN_EVALUATION_QUESTIONS)?;
        let mut evaluation: HashMap<String, usize> = HashMap::new();
        for (i, item) in self.evaluation_questions.iter().enumerate() {
            let field = format!("evaluation_questions[{i}].question");
            check_text(&field, &item.question)?;
            check_text(&format!("evaluation_questions[{i}].consistent"), &item.consistent)?;
            check_text(&format!("evaluation_questions[{i}].inconsistent"), &item.inconsistent)?;
            if normalize_question(&item.consistent) == normalize_question(&item.inconsistent) {
                return Err(TraitError::invalid(
                    format!("evaluation_questions[{i}].inconsistent"),
                    "is the same as consistent",
                ));
            }
            let key = normalize_question(&item.question);
            if let Some(j) = extraction.get(&key) {
                return Err(TraitError::invalid(field, format!("also appears in extraction_questions[{j}]")));
            }
            if let Some(first) = evaluation.insert(key, i) {
                return Err(TraitError::invalid(field, format!("repeats evaluation_questions[{first}].question")));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), TraitError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z')) && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
    if ok {
        Ok(())
    } else {
        Err(TraitError::invalid(
            "name",
            format!("{name:?} is not a lowercase identifier (a-z first, then a-z, 0-9 or _)"),
        ))
    }
}

fn check_text(field: &str, text: &str) -> Result<(), TraitError> {
    if text.trim().is_empty() {
        Err(TraitError::invalid(field, "is empty"))
    } else if text.len() > MAX_TEXT_BYTES {
        Err(TraitError::invalid(field, format!("is {} bytes, more than the {MAX_TEXT_BYTES} accepted", text.len())))
    } else {
        Ok(())
    }
}

fn check_line(field: &str, text: &str) -> Result<(), TraitError> {
    check_text(field, text)?;
    if text.contains(['\n', '\r']) {
        return Err(TraitError::invalid(field, "must be a single line"));
    }
    Ok(())
}

fn check_adjective(field: &str, text: &str) -> Result<(), TraitError> {
    check_line(field, text)?;
    if text.trim() != text {
        return Err(TraitError::invalid(field, "has leading or trailing whitespace"));
    }
    Ok(())
}

fn check_count(field: &str, given: usize, min: usize) -> Result<(), TraitError> {
    let max = if field == "instructions" { MAX_INSTRUCTIONS } else { MAX_QUESTIONS };
    if given < min {
        Err(TraitError::invalid(field, format!("{given} given, at least {min} required")))
    } else if given > max {
        Err(TraitError::invalid(field, format!("{given} given, at most {max} accepted")))
    } else {
        Ok(())
    }
}

/// serde_json appends " at line L column C" to its messages; the error reports those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

// ---- Conversion from a JSON value, with the path of every field in its errors ----

/// A JSON value's kind, for messages: "a string", "null", ...
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, TraitError> {
    v.as_object().ok_or_else(|| TraitError::WrongType {
        field: path.to_string(),
        expected: "an object",
        found: type_name(v),
    })
}

/// Rejects fields of `obj` not in `known`, in the order they appear.
fn check_fields(obj: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), TraitError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(TraitError::UnknownField { path: path.to_string(), field: k.clone() }),
        None => Ok(()),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn field<'a>(obj: &'a Map<String, Value>, path: &str, key: &str) -> Result<&'a Value, TraitError> {
    obj.get(key).ok_or_else(|| TraitError::Missing { field: join(path, key) })
}

fn string(v: &Value, path: &str) -> Result<String, TraitError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(TraitError::WrongType { field: path.to_string(), expected: "a string", found: type_name(other) }),
    }
}

fn string_field(obj: &Map<String, Value>, path: &str, key: &str) -> Result<String, TraitError> {
    string(field(obj, path, key)?, &join(path, key))
}

fn array_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>, TraitError> {
    match field(obj, "", key)? {
        Value::Array(items) => Ok(items),
        other => Err(TraitError::WrongType { field: key.to_string(), expected: "an array", found: type_name(other) }),
    }
}

fn from_value(value: &Value) -> Result<TraitDefinition, TraitError> {
    let root = as_object(value, "(root)")?;
    check_fields(
        root,
        "(root)",
        &[
            "name",
            "description",
            "positive_adjective",
            "negative_adjective",
            "instructions",
            "extraction_questions",
            "evaluation_questions",
        ],
    )?;

    let name = string_field(root, "", "name")?;
    let description = string_field(root, "", "description")?;
    let positive_adjective = string_field(root, "", "positive_adjective")?;
    let negative_adjective = string_field(root, "", "negative_adjective")?;

    let instructions = array_field(root, "instructions")?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("instructions[{i}]");
            let obj = as_object(item, &path)?;
            check_fields(obj, &path, &["pos", "neg"])?;
            Ok(InstructionPair { pos: string_field(obj, &path, "pos")?, neg: string_field(obj, &path, "neg")? })
        })
        .collect::<Result<Vec<_>, TraitError>>()?;

    let extraction_questions = array_field(root, "extraction_questions")?
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &format!("extraction_questions[{i}]")))
        .collect::<Result<Vec<_>, TraitError>>()?;

    let evaluation_questions = array_field(root, "evaluation_questions")?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("evaluation_questions[{i}]");
            let obj = as_object(item, &path)?;
            check_fields(obj, &path, &["question", "consistent", "inconsistent"])?;
            Ok(EvaluationQuestion {
                question: string_field(obj, &path, "question")?,
                consistent: string_field(obj, &path, "consistent")?,
                inconsistent: string_field(obj, &path, "inconsistent")?,
            })
        })
        .collect::<Result<Vec<_>, TraitError>>()?;

    Ok(TraitDefinition {
        name,
        description,
        positive_adjective,
        negative_adjective,
        instructions,
        extraction_questions,
        evaluation_questions,
    })
}
