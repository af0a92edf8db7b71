//! Chat templates: the model's Jinja template from `tokenizer.chat_template`, rendered with minijinja the way
//! Hugging Face `apply_chat_template(.., tokenize=False)` renders it with jinja2, and the prompt encoding that
//! keeps message contents from forging special tokens.
//!
//! HF's environment is reproduced: `trim_blocks` and `lstrip_blocks` on, trailing newline dropped, loop controls,
//! Python string methods (`.strip()`, `.startswith()`, ...), `raise_exception`, `strftime_now`, a `tojson` that
//! writes what Python's `json.dumps` writes, and `{% generation %}` blocks accepted as plain blocks.

use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{context, AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};
use personascope_gguf::Gguf;

use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// Limits on one render, so that a hostile template fails with an error instead of hanging or exhausting memory
/// (in a browser tab, an abort is a wasm trap). Fuel is minijinja's one budget for work: one unit per
/// instruction and one per 64 bytes of strings (or two list slots) a render makes, output included. A real
/// template spends a few hundred units per message, so this allows conversations of thousands of messages, while
/// a string doubled in a loop runs out at about 128 MB.
pub const TEMPLATE_FUEL: u64 = 2_000_000;
/// Output allowed beyond the conversation's own text: the template's markup for every message, many times over.
pub const TEMPLATE_OUTPUT_SLACK: usize = 1 << 20;
/// The longest template source accepted (real ones are a few KB; the largest known, with tool calling, ~20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// The render's output, refused past `cap` bytes.
struct CappedOutput {
    bytes: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("output cap"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One chat message. `role` is typically `system`, `user` or `assistant`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The roles chat templates know. Any other role would be rendered as if it were one of them (or dropped).
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// The one check of a conversation's shape, for the CLI, the JS API and the page: not empty, every role one of
/// [`ROLES`]. The error names the message by its index.
pub fn check_messages(messages: &[Message]) -> std::result::Result<(), String> {
    if messages.is_empty() {
        return Err("messages must not be empty".into());
    }
    match messages.iter().enumerate().find(|(_, m)| !ROLES.contains(&m.role.as_str())) {
        Some((i, m)) => {
            Err(format!("message {i} has role {:?}; the roles are \"system\", \"user\" and \"assistant\"", m.role))
        }
        None => Ok(()),
    }
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the BOS/EOS token texts it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("source_len", &self.source.len())
            .finish_non_exhaustive()
    }
}

/// Why a render failed: a limit (the template is refused whatever the conversation) or anything else.
enum RenderError {
    Limit(String),
    Other(ModelError),
}

impl From<RenderError> for ModelError {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::Limit(msg) => ModelError::Template(msg),
            RenderError::Other(e) => e,
        }
    }
}

fn tmpl_err(msg: impl Into<String>) -> ModelError {
    ModelError::Template(msg.into())
}

fn render_err(e: Error) -> ModelError {
    ModelError::Template(e.to_string())
}

/// The text of the token whose id is stored under `key`, or "" when the key is absent.
fn token_text_at(g: &Gguf, key: &str) -> Result<String> {
    let Some(v) = g.get(key) else { return Ok(String::new()) };
    let id = v.as_u64().ok_or_else(|| tmpl_err(format!("`{key}` is not a non-negative integer: {v:?}")))?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    usize::try_from(id)
        .ok()
        .and_then(|i| tokens.get(i))
        .map(|s| s.to_string())
        .ok_or_else(|| tmpl_err(format!("`{key}` = {id} is outside the vocabulary of {} tokens", tokens.len())))
}

impl ChatTemplate {
    /// Reads `tokenizer.chat_template` and the BOS/EOS token texts from the file.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let source = match g.get("tokenizer.chat_template") {
            None => {
                return Err(tmpl_err(
                    "the GGUF has no tokenizer.chat_template; supply a template with ChatTemplate::from_source",
                ))
            }
            Some(v) => v.as_str().ok_or_else(|| tmpl_err("tokenizer.chat_template is not a string"))?,
        };
        let bos = token_text_at(g, "tokenizer.ggml.bos_token_id")?;
        let eos = token_text_at(g, "tokenizer.ggml.eos_token_id")?;
        let t = Self::from_source(source, &bos, &eos)?;
        t.probe()?;
        Ok(t)
    }

    /// Renders a short conversation under the render limits, so that a template that hangs, floods or fails on
    /// every conversation fails the load with its message rather than the first chat. Templates may refuse
    /// some shapes on purpose (a system message, say), so the probe passes when any of a few shapes renders; a
    /// limit reached on any of them fails it.
    pub fn probe(&self) -> Result<()> {
        let shapes: [&[Message]; 3] = [
            &[
                Message::system("You are a helpful assistant."),
                Message::user("Hello."),
                Message::assistant("Hi! How can I help?"),
                Message::user("Tell me a fact."),
            ],
            &[Message::user("Hello."), Message::assistant("Hi! How can I help?"), Message::user("Tell me a fact.")],
            &[Message::user("Hello.")],
        ];
        let mut first_err = None;
        for messages in shapes {
            match self.render_checked(messages, true) {
                Ok(_) => return Ok(()),
                Err(e @ RenderError::Limit(_)) => return Err(e.into()),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.map_or_else(
            || tmpl_err("the template renders no conversation"),
            |e| tmpl_err(format!("the template renders no test conversation: {}", ModelError::from(e))),
        ))
    }

    /// Compiles a template; syntax errors are reported here rather than at the first render.
    pub fn from_source(template: &str, bos: &str, eos: &str) -> Result<Self> {
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(tmpl_err(format!(
                "the template is {} bytes, more than the {MAX_TEMPLATE_BYTES} accepted",
                template.len()
            )));
        }
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        // HF renders with jinja2's trim_blocks and lstrip_blocks on, and drops the trailing newline.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(render_err)?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // jinja2's default `Undefined`: printing or iterating it gives nothing, attributes of it are errors.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let text = match value.kind() {
                ValueKind::Undefined => return Ok(()),
                ValueKind::String => return out.write_str(value.as_str().unwrap_or_default()).map_err(write_err),
                _ => py_repr(value, 0)?,
            };
            out.write_str(&text).map_err(write_err)
        });
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_function("strftime_now", |fmt: String| -> std::result::Result<String, Error> {
            let now = system_now_unix().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "strftime_now: this target has no clock; set the time with ChatTemplate::with_now",
                )
            })?;
            Ok(strftime(&fmt, now))
        });
        env.add_template_owned(TEMPLATE_NAME, jinja2_compat_source(template)).map_err(render_err)?;
        Ok(ChatTemplate { env, source: template.to_string(), bos: bos.to_string(), eos: eos.to_string() })
    }

    /// Fixes the time `strftime_now` reports (seconds since the Unix epoch, UTC): for reproducible prompts, and
    /// on targets without a clock (wasm32). Without it the system clock is used, in UTC.
    pub fn with_now(mut self, unix_seconds: i64) -> Self {
        self.env.add_function("strftime_now", move |fmt: String| strftime(&fmt, unix_seconds));
        self
    }

    /// The template source as given (before `{% generation %}` tags are rewritten).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    pub fn eos_token(&self) -> &str {
        &self.eos
    }

    /// Renders the conversation to text, as HF `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=..)` does.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_checked(messages, add_generation_prompt).map_err(ModelError::from)
    }

    /// [`ChatTemplate::render`] under the fuel and output limits, telling a limit apart from other errors.
    fn render_checked(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, RenderError> {
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| RenderError::Other(render_err(e)))?;
        let ctx = context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let text: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let cap = text.saturating_mul(4).saturating_add(TEMPLATE_OUTPUT_SLACK);
        let mut out = CappedOutput { bytes: Vec::new(), cap, overflowed: false };
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => {}
            Err(_) if out.overflowed => {
                return Err(RenderError::Limit(format!(
                    "the template's output passed {cap} bytes (4 x the conversation's text + {TEMPLATE_OUTPUT_SLACK}); \
                     it is refused as a runaway template"
                )))
            }
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(RenderError::Limit(format!(
                    "the template used more than its budget of {TEMPLATE_FUEL} work units (steps, and bytes made) \
                     for {} messages; it is refused as a runaway template",
                    messages.len()
                )))
            }
            Err(e) => return Err(RenderError::Other(render_err(e))),
        }
        String::from_utf8(out.bytes).map_err(|_| RenderError::Other(tmpl_err("the template rendered invalid UTF-8")))
    }

    /// Token ids of the prompt for `messages`, generation prompt included, where only the template's own text can
    /// produce special tokens: special-token text inside a message's content is encoded as plain text.
    ///
    /// The template is rendered twice, with the real contents and with each content replaced by a unique
    /// private-use sentinel. The sentinel render gives the template's literal pieces in order; the real render is
    /// then walked piece, content, piece, ... to find where each content lies (exactly, or trimmed, since some
    /// templates trim). If the walk does not fit (the template rewrites contents), this is an error, not a guess.
    /// Apart from that, the ids equal `tok.encode_with_special(&self.render(messages, true)?)`.
    pub fn encode_prompt(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        // Roles are template input that cannot be told apart from template text: refuse markers and sentinels.
        for m in messages {
            if m.role.contains([SENTINEL_OPEN, SENTINEL_CLOSE])
                || tok.encode_with_special(&m.role)? != tok.encode(&m.role)?
            {
                return Err(tmpl_err(format!("message role {:?} contains special-token text", m.role)));
            }
        }
        let real = self.render(messages, true)?;
        let sentinels: Vec<Option<String>> =
            messages.iter().enumerate().map(|(i, m)| (!m.content.is_empty()).then(|| sentinel(i))).collect();
        let masked: Vec<Message> = messages
            .iter()
            .zip(&sentinels)
            .map(|(m, s)| Message { role: m.role.clone(), content: s.clone().unwrap_or_default() })
            .collect();
        let skeleton = self.render(&masked, true)?;
        let (pieces, order) = split_skeleton(&skeleton, messages.len())?;
        let contents: Vec<&str> = order.iter().map(|&i| messages[i].content.as_str()).collect();
        let content_ranges = locate_contents(&real, &pieces, &contents).ok_or_else(|| {
            tmpl_err(
                "cannot tell the template's text from the message contents in the rendered prompt (the template \
                 changes contents beyond trimming them); refusing to guess which special-token text is the \
                 template's",
            )
        })?;
        let mut template_ranges = Vec::with_capacity(content_ranges.len() + 1);
        let mut pos = 0;
        for r in &content_ranges {
            template_ranges.push(pos..r.start);
            pos = r.end;
        }
        template_ranges.push(pos..real.len());
        tok.encode_with_special_in(&real, &template_ranges)
    }
}

/// Sentinel characters from the Supplementary Private Use Area-B, which no template or tokenizer gives meaning to.
const SENTINEL_OPEN: char = '\u{10FF00}';
const SENTINEL_CLOSE: char = '\u{10FF01}';
const SENTINEL_DIGIT0: u32 = 0x10FF10;

/// The stand-in for message `i`'s content: open, hex digits as private-use characters, close.
fn sentinel(i: usize) -> String {
    let mut s = String::new();
    s.push(SENTINEL_OPEN);
    for d in format!("{i:x}").chars() {
        let v = d.to_digit(16).unwrap_or(0);
        s.push(char::from_u32(SENTINEL_DIGIT0 + v).unwrap_or(SENTINEL_CLOSE));
    }
    s.push(SENTINEL_CLOSE);
    s
}

/// Splits a sentinel render into the template's literal pieces and, between them, the message index whose
/// content stood there. `pieces.len() == order.len() + 1`.
fn split_skeleton(skeleton: &str, n_messages: usize) -> Result<(Vec<String>, Vec<usize>)> {
    let bad = || tmpl_err("the template altered a content placeholder; cannot separate template text from contents");
    let mut pieces = Vec::new();
    let mut order = Vec::new();
    let mut rest = skeleton;
    while let Some(open) = rest.find(SENTINEL_OPEN) {
        pieces.push(rest[..open].to_string());
        let after = &rest[open + SENTINEL_OPEN.len_utf8()..];
        let close = after.find(SENTINEL_CLOSE).ok_or_else(bad)?;
        let mut index = 0usize;
        for c in after[..close].chars() {
            let d = (c as u32).checked_sub(SENTINEL_DIGIT0).filter(|d| *d < 16).ok_or_else(bad)?;
            index = index.checked_mul(16).and_then(|x| x.checked_add(d as usize)).ok_or_else(bad)?;
        }
        if close == 0 || index >= n_messages {
            return Err(bad());
        }
        order.push(index);
        rest = &after[close + SENTINEL_CLOSE.len_utf8()..];
    }
    if rest.contains(SENTINEL_CLOSE) {
        return Err(bad());
    }
    pieces.push(rest.to_string());
    Ok((pieces, order))
}

/// Finds, in `real`, the byte range of each content occurrence, given the literal pieces around them
/// (`pieces.len() == contents.len() + 1`). A content may appear exactly or trimmed at either or both ends.
/// Backtracks over those choices; gives up (None) past a step budget rather than explode.
fn locate_contents(real: &str, pieces: &[String], contents: &[&str]) -> Option<Vec<std::ops::Range<usize>>> {
    fn variants(c: &str) -> Vec<&str> {
        let mut v = vec![c, c.trim(), c.trim_end(), c.trim_start()];
        let mut seen = Vec::with_capacity(4);
        v.retain(|x| {
            let fresh = !seen.contains(x);
            seen.push(*x);
            fresh
        });
        v
    }
    let variant_lists: Vec<Vec<&str>> = contents.iter().map(|c| variants(c)).collect();
    // Frame k: content k starts at `start[k]`, currently trying variant `choice[k]`.
    let mut start: Vec<usize> = Vec::with_capacity(contents.len());
    let mut choice: Vec<usize> = Vec::with_capacity(contents.len());
    let mut budget = 100_000usize;
    // Position right after piece 0.
    if !real.starts_with(pieces[0].as_str()) {
        return None;
    }
    let mut pos = pieces[0].len();
    let mut next_choice = 0usize;
    loop {
        budget = budget.checked_sub(1)?;
        let k = start.len();
        if k == contents.len() {
            if pos == real.len() {
                return Some(
                    start
                        .iter()
                        .zip(&choice)
                        .enumerate()
                        .map(|(i, (&s, &c))| s..s + variant_lists[i][c].len())
                        .collect(),
                );
            }
        } else {
            // Try variants of content k from `next_choice` on.
            let tail = &real[pos..];
            let found = (next_choice..variant_lists[k].len()).find(|&c| {
                let v = variant_lists[k][c];
                tail.starts_with(v) && tail[v.len()..].starts_with(pieces[k + 1].as_str())
            });
            if let Some(c) = found {
                start.push(pos);
                choice.push(c);
                pos += variant_lists[k][c].len() + pieces[k + 1].len();
                next_choice = 0;
                continue;
            }
        }
        // Dead end: backtrack to the previous content and try its next variant.
        let (s, c) = (start.pop()?, choice.pop()?);
        pos = s;
        next_choice = c + 1;
    }
}

/// Adapts template source to minijinja where jinja2 (as HF configures it) reads it differently:
/// - jinja2 turns `\r\n` and `\r` into `\n` everywhere, text and string literals alike;
/// - jinja2 string literals are Python `unicode-escape`d: backslash-newline is a line continuation (Mistral's
///   templates use it), `\a`, `\v` and `\UXXXXXXXX` are escapes, `\/` stays two characters;
/// - HF's `{% generation %}` ... `{% endgeneration %}` become `{% if true %}` ... `{% endif %}` with the same
///   whitespace control, so the output is unchanged.
///
/// Text outside tags, comments and `{% raw %}` blocks are copied unchanged.
fn jinja2_compat_source(src: &str) -> String {
    let src = src.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(src.len());
    let mut rest = src.as_str();
    while let Some(p) = ["{{", "{%", "{#"].iter().filter_map(|t| rest.find(t)).min() {
        out.push_str(&rest[..p]);
        let tag = &rest[p..];
        if tag.starts_with("{#") {
            let end = tag.find("#}").map_or(tag.len(), |e| e + 2);
            out.push_str(&tag[..end]);
            rest = &tag[end..];
            continue;
        }
        let is_stmt = tag.starts_with("{%");
        let (body, consumed) = scan_tag_body(&tag[2..], if is_stmt { "%}" } else { "}}" });
        rest = &tag[2 + consumed..];
        let close = if is_stmt { "%}" } else { "}}" };
        if !is_stmt {
            out.push_str("{{");
            out.push_str(&body);
            out.push_str(close);
            continue;
        }
        let (open_ctl, word, close_ctl) = stmt_parts(&body);
        match word {
            "generation" => out.push_str(&format!("{{%{open_ctl} if true {close_ctl}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open_ctl} endif {close_ctl}%}}")),
            "raw" => {
                out.push_str("{%");
                out.push_str(&body);
                out.push_str("%}");
                // Copy verbatim through the matching `{% endraw %}`.
                let mut search = 0;
                let end = loop {
                    let Some(q) = rest[search..].find("{%").map(|q| q + search) else { break rest.len() };
                    // The closing `%}` is searched after the opening `{%`: in `{%}` they overlap (found by fuzzing).
                    let Some(c) = rest[q + 2..].find("%}").map(|c| q + 2 + c) else { break rest.len() };
                    if stmt_parts(&rest[q + 2..c]).1 == "endraw" {
                        break c + 2;
                    }
                    search = q + 2;
                };
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
            _ => {
                out.push_str("{%");
                out.push_str(&body);
                out.push_str(close);
            }
        }
    }
    out.push_str(rest);
    out
}

/// A statement body split into its whitespace-control markers and the trimmed words between them.
fn stmt_parts(body: &str) -> (&str, &str, &str) {
    let (open_ctl, inner) = match body.as_bytes().first() {
        Some(b'-' | b'+') => body.split_at(1),
        _ => ("", body),
    };
    let inner = inner.trim_end();
    let (inner, close_ctl) = match inner.as_bytes().last() {
        Some(b'-' | b'+') => inner.split_at(inner.len() - 1),
        _ => (inner, ""),
    };
    (open_ctl, inner.trim(), close_ctl)
}

/// Reads a tag body up to `close` (outside string literals), rewriting Python-only string escapes into ones
/// minijinja reads the same way. Returns the rewritten body and the bytes consumed, `close` included.
fn scan_tag_body(s: &str, close: &str) -> (String, usize) {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match quote {
            None => {
                if s[i..].starts_with(close) {
                    return (out, i + close.len());
                }
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                out.push(c);
            }
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(q) if c == '\\' => match it.next() {
                None => out.push('\\'),
                Some((_, '\n')) => {}
                Some((_, '/')) => out.push_str("\\\\/"),
                Some((_, 'a')) => out.push_str("\\u0007"),
                Some((_, 'v')) => out.push_str("\\u000b"),
                Some((j, 'U')) => {
                    let decoded = s
                        .get(j + 1..j + 9)
                        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32);
                    match decoded {
                        Some(ch) => {
                            for _ in 0..8 {
                                it.next();
                            }
                            if ch == q || ch == '\\' {
                                out.push('\\');
                            }
                            out.push(ch);
                        }
                        None => out.push_str("\\U"),
                    }
                }
                Some((_, d)) => {
                    out.push('\\');
                    out.push(d);
                }
            },
            Some(_) => out.push(c),
        }
    }
    (out, s.len())
}

fn write_err(_: std::fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, "writing template output")
}

/// How Python's `str()` prints a value in `{{ }}`: `None`, `True`, `1e+20`, `['a', 1]`, `{'k': 'v'}` — where
/// minijinja would print `none`-style or JSON-style text.
fn py_repr(v: &Value, depth: usize) -> std::result::Result<String, Error> {
    let mut left = MAX_PRINTED_VALUE_BYTES;
    let mut out = String::new();
    py_repr_into(v, depth, &mut out, &mut left)?;
    Ok(out)
}

/// The most text one printed value may give. Lists are lazy in minijinja (`[1] * 10**12` costs nothing until it
/// is walked), and printing walks them outside the engine's fuel, so the walk has its own bound.
const MAX_PRINTED_VALUE_BYTES: usize = 16 << 20;

fn py_repr_into(v: &Value, depth: usize, out: &mut String, left: &mut usize) -> std::result::Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(ErrorKind::InvalidOperation, "value nested too deeply to print"));
    }
    let piece = match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => (if v.is_true() { "True" } else { "False" }).into(),
        ValueKind::Number if v.is_integer() => v.to_string(),
        ValueKind::Number => py_float(f64::try_from(v.clone())?),
        ValueKind::String if depth == 0 => v.as_str().unwrap_or_default().to_string(),
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            push_bounded(out, "[", left)?;
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    push_bounded(out, ", ", left)?;
                }
                py_repr_into(&item, depth + 1, out, left)?;
            }
            return push_bounded(out, "]", left);
        }
        ValueKind::Map => {
            push_bounded(out, "{", left)?;
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    push_bounded(out, ", ", left)?;
                }
                let val = v.get_item(&key)?;
                py_repr_into(&key, depth + 1, out, left)?;
                push_bounded(out, ": ", left)?;
                py_repr_into(&val, depth + 1, out, left)?;
            }
            return push_bounded(out, "}", left);
        }
        _ => v.to_string(),
    };
    push_bounded(out, &piece, left)
}

fn push_bounded(out: &mut String, piece: &str, left: &mut usize) -> std::result::Result<(), Error> {
    *left = left.checked_sub(piece.len()).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("a value the template prints is over {MAX_PRINTED_VALUE_BYTES} bytes; it is refused as a runaway template"),
        )
    })?;
    out.push_str(piece);
    Ok(())
}

/// Python's `repr` of a str: single quotes unless the text has `'` and no `"`.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `raise_exception(msg)`: templates call it to reject a conversation (e.g. roles not alternating).
fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {msg}")))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// `tojson` as HF defines it: Python `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` — no HTML escaping, `", "` and `": "` separators — unlike minijinja's built-in.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) if n > 256 => {
                return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent is more than 256 spaces"))
            }
            Some(n) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            None => Some(v.as_str().filter(|s| s.len() <= 256).map(str::to_owned).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string of at most 256 bytes",
                )
            })?),
        },
    };
    let (mut item_sep, mut key_sep) =
        if indent.is_some() { (",".to_string(), ": ".to_string()) } else { (", ".to_string(), ": ".to_string()) };
    if let Some(seps) = kwargs.get::<Option<Value>>("separators")? {
        if !seps.is_none() {
            let a = seps.get_item_by_index(0)?;
            let b = seps.get_item_by_index(1)?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => {
                    item_sep = a.to_string();
                    key_sep = b.to_string();
                }
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
    }
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, &opts, 0, &mut out)?;
    Ok(out)
}

fn json_newline(opts: &JsonOpts, level: usize, out: &mut String) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(v: &Value, opts: &JsonOpts, level: usize, out: &mut String) -> std::result::Result<(), Error> {
    if level > 256 {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
    }
    // Lists are lazy and this walk is outside the engine's fuel: the same bound as for printing.
    if out.len() > MAX_PRINTED_VALUE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the text is over {MAX_PRINTED_VALUE_BYTES} bytes; it is refused as a runaway template"),
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let x = f64::try_from(v.clone())?;
                out.push_str(&py_float(x));
            }
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = v.try_iter()?.peekable();
            if items.peek().is_none() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                json_newline(opts, level + 1, out);
                write_json(&item, opts, level + 1, out)?;
            }
            json_newline(opts, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                let key_text = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".to_string(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
                    ValueKind::Number if key.is_integer() => key.to_string(),
                    ValueKind::Number => py_float(f64::try_from(key.clone())?),
                    other => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {other}"),
                        ))
                    }
                };
                entries.push((key_text, val));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                json_newline(opts, level + 1, out);
                json_string(k, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                write_json(val, opts, level + 1, out)?;
            }
            json_newline(opts, level, out);
            out.push('}');
        }
        other => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: {other} is not JSON serializable")))
        }
    }
    Ok(())
}

/// A JSON string literal as Python's `json.dumps` writes it.
fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it: shortest round-trip digits, fixed notation for exponents -4..16,
/// otherwise `1e+16` style.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            let (int_part, frac) = if digits.len() > int_len {
                (digits[..int_len].to_string(), digits[int_len..].to_string())
            } else {
                (format!("{digits:0<int_len$}"), "0".to_string())
            };
            format!("{sign}{int_part}.{frac}")
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn system_now_unix() -> Option<i64> {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_secs()).ok()
}

/// `SystemTime::now` panics on wasm32-unknown-unknown; there the time must come from `with_now`.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn system_now_unix() -> Option<i64> {
    None
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Python `strftime` (C locale) of a UTC time, for the directives chat templates use; others pass through.
fn strftime(fmt: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let wd = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + u32::from(m > 2 && is_leap(y));
    let month = MONTHS[(m - 1) as usize];
    let weekday = WEEKDAYS[wd];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:>2}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('B') => write!(out, "{month}"),
            Some('b') | Some('h') => write!(out, "{}", &month[..3]),
            Some('A') => write!(out, "{weekday}"),
            Some('a') => write!(out, "{}", &weekday[..3]),
            Some('w') => write!(out, "{wd}"),
            Some('H') => write!(out, "{hh:02}"),
            Some('I') => write!(out, "{:02}", if hh % 12 == 0 { 12 } else { hh % 12 }),
            Some('p') => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{mm:02}"),
            Some('S') => write!(out, "{ss:02}"),
            Some('F') => write!(out, "{y}-{m:02}-{d:02}"),
            Some('T') => write!(out, "{hh:02}:{mm:02}:{ss:02}"),
            Some('Z') => write!(out, "UTC"),
            Some('z') => write!(out, "+0000"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e300, "-2.5e+300"),
        ] {
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday.
        assert_eq!(strftime("%d %b %Y", 1_721_952_000), "26 Jul 2024");
        assert_eq!(strftime("%A %B %j %H:%M:%S %%", 1_721_952_000 + 3_723), "Friday July 208 01:02:03 %");
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%F", 951_782_400), "2000-02-29");
        assert_eq!(strftime("%Y-%m-%d", -86_400), "1969-12-31");
    }

    #[test]
    fn source_adapted_to_jinja2_reading() {
        let src = "a{%- generation -%} b {% endgeneration %}c{% if x %}{% endif %}";
        assert_eq!(jinja2_compat_source(src), "a{%- if true -%} b {% endif %}c{% if x %}{% endif %}");
        assert_eq!(jinja2_compat_source("{% generations %}"), "{% generations %}");
        // Escapes inside string literals only; text, comments and raw blocks untouched.
        let src = "x\\\n{{ 'a\\\nb\\/\\v\\U0001F600\\'}}' }}{# '\\\n' #}{% raw %}{{ '\\\n' }}{% endraw %}\r\n";
        assert_eq!(
            jinja2_compat_source(src),
            "x\\\n{{ 'ab\\\\/\\u000b\u{1F600}\\'}}' }}{# '\\\n' #}{% raw %}{{ '\\\n' }}{% endraw %}\n"
        );
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // One content, one range.
    fn locate_prefers_exact_then_trimmed() {
        let pieces = vec!["<a>".to_string(), "</a>".to_string()];
        assert_eq!(locate_contents("<a> x </a>", &pieces, &[" x "]), Some(vec![3..6]));
        assert_eq!(locate_contents("<a>x</a>", &pieces, &[" x "]), Some(vec![3..4]));
        assert_eq!(locate_contents("<a>y</a>", &pieces, &[" x "]), None);
        // Two adjacent contents with an empty piece between: needs backtracking over the first's variants.
        let pieces = vec!["[".to_string(), String::new(), "]".to_string()];
        assert_eq!(locate_contents("[a b]", &pieces, &["a ", "b"]), Some(vec![1..3, 3..4]));
        assert_eq!(locate_contents("[ab]", &pieces, &["a ", " b"]), Some(vec![1..2, 2..3]));
    }
}
