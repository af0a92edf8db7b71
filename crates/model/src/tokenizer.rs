//! The tokenizer, built from GGUF metadata alone: GPT-2 style byte-level BPE (`tokenizer.ggml.model` = `gpt2`)
//! with the pre-tokenizer named by `tokenizer.ggml.pre`.
//!
//! Encoding runs on the `tokenizers` crate (BPE model + pre-tokenizer), built without `onig` so it also compiles
//! for wasm32. Decoding is done here, byte by byte, because only then can a streaming decoder hold back an
//! incomplete UTF-8 sequence and still agree exactly with a whole-sequence decode.
//!
//! Special-token text is handled in two ways on purpose. [`Tokenizer::encode`] treats text such as
//! `<|im_start|>` as ordinary characters, so text a user typed can never forge a control token;
//! [`Tokenizer::encode_with_special`] maps it to the control token, and is meant only for text the program
//! itself wrote (chat-template markers).

use std::ops::Range;

use personascope_gguf::Gguf;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{ModelError, Result};

/// Split regex of Qwen2 (llama.cpp pre-type `qwen2`): single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split regex of Llama 3 (llama.cpp pre-type `llama-bpe`): digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values this tokenizer reproduces, named as llama.cpp names them.
pub const SUPPORTED_PRE: &[&str] = &["smollm", "qwen2", "llama-bpe", "llama3", "llama-v3", "gpt-2", "gpt2"];

/// End-of-turn token texts that stop generation when the vocabulary has them as control or user-defined tokens.
const END_OF_TURN_TEXTS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>"];

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A BPE token spelled in the byte-level alphabet.
    Normal,
    /// Control token (`<|im_start|>`): matched only by `encode_with_special`, skipped when decoding with
    /// `skip_special`.
    Control,
    /// User-defined added token (`<think>`): matched whole in any text, as llama.cpp and transformers do, and
    /// never skipped.
    UserDefined,
}

/// GPT-2's reversible byte ↔ character mapping: printable Latin-1 bytes stand for themselves, the other 68
/// bytes are moved to U+0100 and up, so that every byte sequence is a string of visible characters.
struct ByteAlphabet {
    /// Indexed by code point (all alphabet characters are below U+0144).
    to_byte: Vec<Option<u8>>,
}

impl ByteAlphabet {
    fn new() -> Self {
        let mut to_byte = vec![None; 0x144];
        let mut next = 256usize;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                usize::from(b)
            } else {
                next += 1;
                next - 1
            };
            to_byte[cp] = Some(b);
        }
        ByteAlphabet { to_byte }
    }

    fn byte_of(&self, c: char) -> Option<u8> {
        self.to_byte.get(c as usize).copied().flatten()
    }
}

/// A byte-level BPE tokenizer built from GGUF metadata. Immutable after construction, so it is `Send + Sync`
/// and can be shared across threads.
pub struct Tokenizer {
    /// BPE model, pre-tokenizer and the user-defined tokens; no control tokens, so its output never contains one.
    plain: tokenizers::Tokenizer,
    tokens: Vec<String>,
    kinds: Vec<Kind>,
    alphabet: ByteAlphabet,
    /// Control and user-defined token ids by the first byte of their text, longest text first, for the
    /// leftmost-longest matching of `encode_with_special`.
    special_by_first_byte: Vec<Vec<u32>>,
    bos: Option<u32>,
    eos: Option<u32>,
    stop: Vec<u32>,
    pre: String,
}

// The tokenizer is shared across threads; fail the build if a field ever stops being thread-safe.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("pre", &self.pre)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

fn tok_err(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

/// An optional token id key, checked against the vocabulary.
fn optional_id(g: &Gguf, key: &str, vocab: usize) -> Result<Option<u32>> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let id = v.as_u64().ok_or_else(|| tok_err(format!("`{key}` is not a non-negative integer: {v:?}")))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < vocab => Ok(Some(id)),
        _ => Err(tok_err(format!("`{key}` = {id} is outside the vocabulary of {vocab} tokens"))),
    }
}

fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| tok_err(format!("split regex for pre-tokenizer `{pre}`: {e}")))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    // The bool is BPE `ignore_merges`: Llama 3 takes a pre-token that is itself in the vocabulary whole.
    Ok(match pre {
        // The original SmolLM2 tokenizer.json: every numeric character alone, then the GPT-2 regex.
        "smollm" => {
            (Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(), false)
        }
        "qwen2" => (split(QWEN2_SPLIT)?, false),
        "llama-bpe" | "llama3" | "llama-v3" => (split(LLAMA3_SPLIT)?, true),
        "gpt-2" | "gpt2" => (ByteLevel::new(false, true, true).into(), false),
        other => {
            return Err(tok_err(format!(
                "unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre); supported: {}",
                SUPPORTED_PRE.join(", ")
            )))
        }
    })
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata. Refuses, naming the value, any tokenizer model
    /// other than `gpt2` and any pre-tokenizer not in [`SUPPORTED_PRE`]: a wrong split would silently give the
    /// model text it was not trained on.
    ///
    /// Some vocabularies lack a token for a few bytes (SmolLM2 has none for 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D,
    /// nor for bytes that never occur in UTF-8); such bytes are dropped when encoding, exactly as Hugging Face
    /// `tokenizers` and llama.cpp drop them, since the model has no way to see them.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(tok_err(format!(
                "unsupported tokenizer model `{model}` (tokenizer.ggml.model); supported: gpt2 (byte-level BPE)"
            )));
        }
        let pre = match g.get("tokenizer.ggml.pre") {
            None => {
                return Err(tok_err(format!(
                    "the file has no tokenizer.ggml.pre, so its pre-tokenizer is unknown; supported: {}",
                    SUPPORTED_PRE.join(", ")
                )))
            }
            Some(v) => v.as_str().ok_or_else(|| tok_err(format!("tokenizer.ggml.pre is not a string: {v:?}")))?,
        };
        let (pre_tok, ignore_merges) = pre_tokenizer(pre)?;

        let tokens: Vec<String> = g.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(str::to_owned).collect();
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(tok_err(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let kinds = match g.get("tokenizer.ggml.token_type") {
            None => vec![Kind::Normal; n],
            Some(v) => {
                let items = v.as_array().ok_or_else(|| tok_err("tokenizer.ggml.token_type is not an array"))?;
                if items.len() != n {
                    return Err(tok_err(format!(
                        "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                        items.len()
                    )));
                }
                (0..n)
                    .map(|i| match items.int(i).unwrap_or(-1) {
                        TYPE_CONTROL => Kind::Control,
                        TYPE_USER_DEFINED => Kind::UserDefined,
                        _ => Kind::Normal,
                    })
                    .collect()
            }
        };

        let alphabet = ByteAlphabet::new();
        // Later duplicates win, as in a Python dict built from the list.
        let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
        let merges_raw = g.get_str_array("tokenizer.ggml.merges")?;
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                .ok_or_else(|| tok_err(format!("merge {i} `{m}` is not two tokens separated by one space")))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| tok_err(format!("building BPE from the GGUF vocabulary and merges: {e}")))?;
        let mut plain = tokenizers::Tokenizer::new(bpe);
        plain.with_pre_tokenizer(Some(pre_tok));
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(&kinds)
            .filter(|(t, k)| **k == Kind::UserDefined && !t.is_empty())
            .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        if !user_defined.is_empty() {
            plain.add_tokens(user_defined).map_err(|e| tok_err(format!("adding user-defined tokens: {e}")))?;
        }

        let mut special_by_first_byte: Vec<Vec<u32>> = vec![Vec::new(); 256];
        for (id, (t, k)) in tokens.iter().zip(&kinds).enumerate() {
            if *k != Kind::Normal {
                if let Some(&b) = t.as_bytes().first() {
                    special_by_first_byte[usize::from(b)].push(id as u32);
                }
            }
        }
        for ids in &mut special_by_first_byte {
            ids.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));
        }

        let bos = optional_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = optional_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let eot = optional_id(g, "tokenizer.ggml.eot_token_id", n)?;
        let mut stop: Vec<u32> = eos.into_iter().chain(eot).collect();
        for text in END_OF_TURN_TEXTS {
            if let Some(id) = tokens.iter().zip(&kinds).position(|(t, k)| t == text && *k != Kind::Normal) {
                stop.push(id as u32);
            }
        }
        let mut seen = std::collections::HashSet::new();
        stop.retain(|id| seen.insert(*id));

        Ok(Tokenizer { plain, tokens, kinds, alphabet, special_by_first_byte, bos, eos, stop, pre: pre.to_string() })
    }

    /// Encodes text as plain text: special-token text in it (`<|im_start|>`) becomes ordinary tokens, never
    /// the control token. Use this for anything a user or a file supplied. No BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.plain.encode_fast(text, false).map_err(|e| tok_err(format!("encoding: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text in which control-token text becomes the control token (leftmost-longest match). Only for
    /// text the program wrote itself, such as chat-template markers.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with_special_in(text, std::slice::from_ref(&(0..text.len())))
    }

    /// Like [`Tokenizer::encode_with_special`], but special-token text is matched only where it lies wholly
    /// inside one of `special_ok` (byte ranges); elsewhere it is plain text. Text between matched special tokens
    /// is encoded as one piece, so the ids equal those of encoding the whole text when nothing is excluded.
    /// This is how a chat prompt keeps the template's markers and neutralizes the ones inside message contents.
    pub fn encode_with_special_in(&self, text: &str, special_ok: &[Range<usize>]) -> Result<Vec<u32>> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut gap_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let found = self.special_by_first_byte[usize::from(bytes[i])].iter().copied().find(|&id| {
                let t = self.tokens[id as usize].as_bytes();
                let end = i + t.len();
                bytes[i..].starts_with(t) && special_ok.iter().any(|r| r.start <= i && end <= r.end)
            });
            match found {
                Some(id) => {
                    // Both ends are char boundaries: the token is valid UTF-8 and matched byte for byte.
                    let gap =
                        text.get(gap_start..i).ok_or_else(|| tok_err("special-token match off a char boundary"))?;
                    out.extend(self.encode(gap)?);
                    out.push(id);
                    i += self.tokens[id as usize].len();
                    gap_start = i;
                }
                None => i += 1,
            }
        }
        let rest = text.get(gap_start..).ok_or_else(|| tok_err("special-token match off a char boundary"))?;
        out.extend(self.encode(rest)?);
        Ok(out)
    }

    /// Appends the bytes token `id` stands for, unless it is skipped as special.
    fn push_bytes(&self, id: u32, skip_special: bool, out: &mut Vec<u8>) -> Result<()> {
        let (Some(text), Some(kind)) = (self.tokens.get(id as usize), self.kinds.get(id as usize)) else {
            return Err(ModelError::TokenOutOfRange { id, vocab: self.tokens.len() });
        };
        match kind {
            Kind::Control if skip_special => {}
            // Added tokens stand for their own text, as in llama.cpp.
            Kind::Control | Kind::UserDefined => out.extend_from_slice(text.as_bytes()),
            Kind::Normal => {
                let start = out.len();
                for c in text.chars() {
                    match self.alphabet.byte_of(c) {
                        Some(b) => out.push(b),
                        None => {
                            // Not spelled in the byte alphabet: the token is its own UTF-8 text, as the byte-level
                            // decoder of `tokenizers` treats it.
                            out.truncate(start);
                            out.extend_from_slice(text.as_bytes());
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes ids to text. Invalid UTF-8 (a multi-byte character cut off) becomes U+FFFD; an id outside the
    /// vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.push_bytes(id, skip_special, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A decoder for generated tokens one at a time (special tokens skipped).
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The raw vocabulary string (byte-level spelling, e.g. `Ġthe`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `id` is a control token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&Kind::Control)
    }

    /// Ids that end generation: EOS, `tokenizer.ggml.eot_token_id`, and the usual end-of-turn tokens the
    /// vocabulary has as added tokens.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// The `tokenizer.ggml.pre` this tokenizer was built for.
    pub fn pre(&self) -> &str {
        &self.pre
    }
}

/// Decodes a stream of token ids into text pieces. A character whose bytes span several tokens (an emoji made
/// of byte tokens) is held back until complete, so every piece is valid UTF-8, and the concatenation of all
/// pieces plus [`StreamDecoder::finish`] equals `decode(ids, true)`.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    text: TextStream,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder { tok, text: TextStream::default() }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.text.push(self.tok, id)
    }

    /// Flushes what is held back; an incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.text.finish()
    }
}

/// [`StreamDecoder`] without the borrow of the tokenizer (passed at each push), for state that lives next to a
/// mutably borrowed engine.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        tok.push_bytes(id, true, &mut self.pending)?;
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..start + valid]));
                    start += valid;
                    match e.error_len() {
                        // Invalid whatever follows: replace it now, exactly as a lossy decode of the whole would.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += len;
                        }
                        // An incomplete character at the end: wait for the next token.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(out)
    }

    /// Flushes what is held back; an incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
