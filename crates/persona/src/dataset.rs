//! Fine-tuning data sets in JSONL, read for screening (projection difference, method doc §7), and the text exports of
//! a screening run (the flagged or kept lines as JSONL, a report as CSV).
//!
//! # Format
//!
//! One JSON object per line, in either of two formats:
//!
//! - **chat**: `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`. The **last**
//!   message must be from the assistant: it is the response. The messages before it are the prompt.
//! - **prompt/response**: `{"prompt": "...", "response": "..."}`. A string `prompt` is one user message.
//!   `"completion"` is accepted in place of `"response"` (the OpenAI legacy and Hugging Face TRL name). The
//!   conversational form of TRL is accepted too: `prompt` as an array of messages, and `response`/`completion` as an
//!   array holding exactly one assistant message.
//!
//! Rules for the prompt, in both formats: it has at least one user message with non-blank content, and a system
//! message may only come first. The response must not be blank. Roles are the exact lowercase words `system`,
//! `user` and `assistant`; `content` must be a string. A line may not mix the formats (`messages` together with
//! `prompt`, `response` or `completion`), nor give both `response` and `completion`.
//!
//! Other fields (a label, an id, metadata) are ignored, but kept: each [`Sample`] holds its original line
//! ([`Sample::raw`]), and [`write_jsonl`] exports that text verbatim.
//!
//! # Reading
//!
//! [`parse_jsonl`] never fails as a whole: a malformed line becomes a [`LineError`] with its 1-based line number and
//! a message saying what is wrong, and the other lines are still read. Lines are split on `\n`; a `\r` before it
//! (CRLF files) is dropped, as is a UTF-8 byte order mark at the start of a line (the file's start, or files
//! concatenated with `cat`). Blank and whitespace-only lines are skipped silently but still counted, so line
//! numbers match an editor's. The last line needs no terminator. [`parse_jsonl_bytes`] reads the file's bytes: a
//! line that is not valid UTF-8 is rejected alone, with its number and the offending byte's column, and the other
//! lines are still read. A line longer than [`MAX_LINE_BYTES`] is rejected from its length, before it is parsed;
//! a file of more than [`MAX_SAMPLES`] samples is read up to that many, and the rest is reported as one error.
//!
//! # Exports
//!
//! [`write_jsonl`] writes samples back as their raw lines, each terminated by `\n`; the result parses back to the
//! same prompts, responses and raw text. [`csv_report`] writes a CSV table (RFC 4180 quoting, with a guard against
//! spreadsheet formula injection; see [`csv_field`]).

use std::borrow::Cow;
use std::fmt;

use crate::traits::type_name;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a message. Serialized as the lowercase word (`"system"`, `"user"`, `"assistant"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant; only allowed as the first message.
    System,
    /// The user.
    User,
    /// The assistant (the model being fine-tuned).
    Assistant,
}

impl Role {
    /// The lowercase name used in the files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// The role with this exact lowercase name, or `None`.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message from `role` with this text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
}

/// One valid line of a data set: a prompt and the assistant's response to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// 1-based line number in the file (blank lines count).
    pub line: usize,
    /// The conversation before the response: an optional system message first, then at least one user message.
    pub prompt: Vec<Message>,
    /// The assistant's response (not blank).
    pub response: String,
    /// The original line text, without its line terminator (nor a byte order mark), as [`write_jsonl`] exports it.
    pub raw: String,
}

impl Sample {
    /// The whole conversation: the prompt followed by the response as an assistant message.
    pub fn conversation(&self) -> Vec<Message> {
        let mut messages = self.prompt.clone();
        messages.push(Message::new(Role::Assistant, self.response.clone()));
        messages
    }
}

/// A line that could not be read as a sample. Displays as `line 7: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong with the line.
    pub message: String,
}

/// The result of reading a data set: the valid samples and the malformed lines, both in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The valid lines.
    pub samples: Vec<Sample>,
    /// The malformed lines (skipped).
    pub errors: Vec<LineError>,
}

const BOM: char = '\u{feff}';

/// The longest line accepted (1 MiB): longer than any context these models hold (some 250,000 tokens of text at
/// the least), and refused before it is parsed or tokenized.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The most samples read from one file; the rest are reported, not silently dropped.
pub const MAX_SAMPLES: usize = 200_000;

/// Reads a JSONL data set; see the [module documentation](self) for the formats and rules. Never fails as a whole:
/// each malformed line is reported in [`Parsed::errors`] and skipped.
pub fn parse_jsonl(text: &str) -> Parsed {
    parse_jsonl_bytes(text.as_bytes())
}

/// [`parse_jsonl`] on a file's bytes: invalid UTF-8 rejects only its own line.
pub fn parse_jsonl_bytes(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE_BYTES {
            parsed.errors.push(LineError {
                line: number,
                message: format!("the line is {} bytes, longer than the {MAX_LINE_BYTES} accepted", line.len()),
            });
            continue;
        }
        let line = match std::str::from_utf8(line) {
            Ok(l) => l,
            Err(e) => {
                parsed.errors.push(LineError {
                    line: number,
                    message: format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
                });
                continue;
            }
        };
        let line = line.strip_prefix(BOM).unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if parsed.samples.len() == MAX_SAMPLES {
            parsed.errors.push(LineError {
                line: number,
                message: format!("the file has more than {MAX_SAMPLES} samples; this line and the rest were not read"),
            });
            break;
        }
        match parse_line(line) {
            Ok((prompt, response)) => {
                parsed.samples.push(Sample { line: number, prompt, response, raw: line.to_owned() })
            }
            Err(message) => parsed.errors.push(LineError { line: number, message }),
        }
    }
    parsed
}

/// The samples' raw lines, each terminated by `\n` (flagged or kept samples, exported in their original form).
///
/// A [`Sample`] built by hand must have a single-line `raw` for the result to be valid JSONL.
pub fn write_jsonl<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> String {
    let mut out = String::new();
    for sample in samples {
        out.push_str(&sample.raw);
        out.push('\n');
    }
    out
}

/// One CSV field, escaped for a spreadsheet:
///
/// - **Formula guard**: a field starting with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'`,
///   so that a spreadsheet shows it as text instead of running it as a formula. Fields that are plain numbers
///   (`-0.53`, `+1e-3`, as Rust's `f64` parser reads them) are left alone, so negative scores stay numbers.
/// - **Quoting** (RFC 4180): a field containing `"`, `,`, `\r` or `\n` is enclosed in double quotes, with each `"`
///   doubled.
pub fn csv_field(value: &str) -> Cow<'_, str> {
    let guarded = value.starts_with(['=', '+', '-', '@', '\t', '\r']) && value.parse::<f64>().is_err();
    let quoted = value.contains(['"', ',', '\r', '\n']);
    if !guarded && !quoted {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 4);
    if quoted {
        out.push('"');
    }
    if guarded {
        out.push('\'');
    }
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quoted {
        out.push('"');
    }
    Cow::Owned(out)
}

/// A CSV table: the header row, then the rows, every field escaped by [`csv_field`], each record terminated by CRLF
/// (RFC 4180). Rows are written as given (the caller keeps them as wide as the header).
pub fn csv_report<R, F>(header: &[&str], rows: R) -> String
where
    R: IntoIterator,
    R::Item: IntoIterator<Item = F>,
    F: AsRef<str>,
{
    let mut out = String::new();
    push_record(&mut out, header.iter());
    for row in rows {
        push_record(&mut out, row);
    }
    out
}

fn push_record<F: AsRef<str>>(out: &mut String, fields: impl IntoIterator<Item = F>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(field.as_ref()));
    }
    out.push_str("\r\n");
}

// ---- One line ----

type Line = (Vec<Message>, String);

fn parse_line(line: &str) -> Result<Line, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message);
        format!("invalid JSON at column {}: {message}", e.column())
    })?;
    let Value::Object(object) = value else {
        return Err(format!("expected a JSON object, found {}", type_name(&value)));
    };
    if object.contains_key("messages") {
        if let Some(other) = ["prompt", "response", "completion"].into_iter().find(|k| object.contains_key(*k)) {
            return Err(format!("has both `messages` and `{other}`: a line must use one format"));
        }
        return parse_chat(&object);
    }
    parse_prompt_response(&object)
}

fn parse_chat(object: &Map<String, Value>) -> Result<Line, String> {
    let value = object.get("messages").ok_or("missing `messages`")?;
    let mut prompt = parse_messages(value, "messages")?;
    let Some(last) = prompt.pop() else {
        return Err("`messages` is empty".into());
    };
    let index = prompt.len();
    if last.role != Role::Assistant {
        return Err(format!(
            "the last message (messages[{index}]) is from the {}, not the assistant: it must be the response",
            last.role
        ));
    }
    if last.content.trim().is_empty() {
        return Err(format!("empty response (messages[{index}].content is blank)"));
    }
    if prompt.is_empty() {
        return Err("no user message: `messages` holds only the response".into());
    }
    check_prompt(&prompt, "messages")?;
    Ok((prompt, last.content))
}

fn parse_prompt_response(object: &Map<String, Value>) -> Result<Line, String> {
    let response = match (object.get("response"), object.get("completion")) {
        (Some(_), Some(_)) => return Err("has both `response` and `completion`: give one".into()),
        (Some(value), None) => Some(("response", value)),
        (None, Some(value)) => Some(("completion", value)),
        (None, None) => None,
    };
    let Some(prompt) = object.get("prompt") else {
        return Err(match response {
            Some((key, _)) => format!("missing `prompt` (the line has `{key}` but no `prompt`)"),
            None => "missing `messages` (chat format) or `prompt` and `response` (prompt/response format)".into(),
        });
    };
    let Some((key, response)) = response else {
        return Err("missing `response` (or `completion`)".into());
    };
    let prompt = match prompt {
        Value::String(text) => vec![Message::new(Role::User, text.clone())],
        Value::Array(_) => {
            let messages = parse_messages(prompt, "prompt")?;
            if messages.is_empty() {
                return Err("`prompt` is an empty array".into());
            }
            messages
        }
        other => return Err(format!("`prompt` must be a string or an array of messages, found {}", type_name(other))),
    };
    check_prompt(&prompt, "prompt")?;
    let response = match response {
        Value::String(text) => text.clone(),
        Value::Array(_) => {
            let mut messages = parse_messages(response, key)?;
            if messages.len() != 1 {
                return Err(format!("`{key}` must hold exactly one assistant message, found {}", messages.len()));
            }
            let message = messages.remove(0);
            if message.role != Role::Assistant {
                return Err(format!("{key}[0] is from the {}, not the assistant", message.role));
            }
            message.content
        }
        other => {
            return Err(format!("`{key}` must be a string or an array of one message, found {}", type_name(other)));
        }
    };
    if response.trim().is_empty() {
        return Err(format!("empty response (`{key}` is blank)"));
    }
    Ok((prompt, response))
}

/// Reads an array of `{"role", "content"}` objects; `field` names the array in messages.
fn parse_messages(value: &Value, field: &str) -> Result<Vec<Message>, String> {
    let Value::Array(items) = value else {
        return Err(format!("`{field}` must be an array of messages, found {}", type_name(value)));
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(message) = item else {
            return Err(format!("{field}[{i}] must be an object with `role` and `content`, found {}", type_name(item)));
        };
        let role = match message.get("role") {
            None => return Err(format!("{field}[{i}]: missing `role`")),
            Some(Value::String(name)) => Role::from_name(name).ok_or_else(|| {
                format!("{field}[{i}]: unknown role {} (expected system, user or assistant)", short(name))
            })?,
            Some(other) => return Err(format!("{field}[{i}].role must be a string, found {}", type_name(other))),
        };
        let content = match message.get("content") {
            None => return Err(format!("{field}[{i}]: missing `content`")),
            Some(Value::String(text)) => text.clone(),
            Some(other) => return Err(format!("{field}[{i}].content is not a string (found {})", type_name(other))),
        };
        messages.push(Message { role, content });
    }
    Ok(messages)
}

/// The prompt rules: a system message only first, at least one user message, not all user messages blank.
fn check_prompt(prompt: &[Message], field: &str) -> Result<(), String> {
    if let Some(i) = prompt.iter().skip(1).position(|m| m.role == Role::System) {
        return Err(format!("{field}[{}]: a system message is only allowed first", i + 1));
    }
    let mut users = prompt.iter().filter(|m| m.role == Role::User).peekable();
    if users.peek().is_none() {
        return Err("no user message in the prompt".into());
    }
    if users.all(|m| m.content.trim().is_empty()) {
        return Err("the prompt's user message is empty".into());
    }
    Ok(())
}

/// A user-given string quoted for an error message, cut to 40 characters.
fn short(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}
