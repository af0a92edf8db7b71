//! When a reply stops, and its text: the one place generation decides, for every engine and every batch.

use crate::generate::StopReason;
use crate::tokenizer::TextStream;
use crate::{Result, Tokenizer};

/// One reply being generated: its tokens, text and scores so far, and why it stopped once it has.
pub struct ReplyState {
    stream: TextStream,
    stop_ids: Vec<u32>,
    max_tokens: usize,
    /// The position the next generated token would take, and the last position the sequence may hold + 1.
    next_pos: usize,
    limit: usize,
    pub ids: Vec<u32>,
    pub text: String,
    /// Per generated token: its projection scores `[trait][residual index]` (empty rows without a monitor).
    pub scores: Vec<Vec<Vec<f32>>>,
    pub stop: Option<StopReason>,
}

/// What became of a sampled token.
pub enum Accepted {
    /// Part of the reply: the text it completes (may be empty inside a multi-byte character).
    Token(String),
    /// The reply ended (an end-of-turn token is not part of it).
    Stopped(StopReason),
}

impl ReplyState {
    /// A reply to a prompt of `prompt_len` tokens in a sequence that may hold `limit` positions.
    pub fn new(tokenizer: &Tokenizer, prompt_len: usize, max_tokens: usize, limit: usize) -> Self {
        let mut r = ReplyState {
            stream: TextStream::default(),
            stop_ids: tokenizer.stop_ids().to_vec(),
            max_tokens,
            next_pos: prompt_len,
            limit,
            ids: Vec::new(),
            text: String::new(),
            scores: Vec::new(),
            stop: None,
        };
        r.stop = r.limit_reached();
        r
    }

    /// MaxTokens or ContextFull when no further token may be generated.
    fn limit_reached(&self) -> Option<StopReason> {
        if self.ids.len() >= self.max_tokens {
            Some(StopReason::MaxTokens)
        } else if self.next_pos >= self.limit {
            Some(StopReason::ContextFull)
        } else {
            None
        }
    }

    /// Whether another token may be asked for.
    pub fn running(&self) -> bool {
        self.stop.is_none()
    }

    /// Whether a step may be submitted for this reply when `ahead` steps are already in flight for it (a
    /// pipelined engine runs one step ahead of what has been read back).
    pub fn may_submit(&self, ahead: usize) -> bool {
        self.running() && self.ids.len() + ahead < self.max_tokens && self.next_pos + ahead < self.limit
    }

    /// Takes the next sampled token (fed through the model with `scores`).
    pub fn accept(&mut self, tokenizer: &Tokenizer, id: u32, scores: Vec<Vec<f32>>) -> Result<Accepted> {
        if let Some(s) = self.stop {
            return Ok(Accepted::Stopped(s));
        }
        if self.stop_ids.contains(&id) {
            self.stop = Some(StopReason::EndOfTurn);
            return Ok(Accepted::Stopped(StopReason::EndOfTurn));
        }
        self.ids.push(id);
        self.scores.push(scores);
        self.next_pos += 1;
        let piece = self.stream.push(tokenizer, id)?;
        self.text.push_str(&piece);
        Ok(Accepted::Token(piece))
    }

    /// After the token's callback: stops on `cancel`, or when a limit is reached.
    pub fn after_callback(&mut self, cancel: bool) {
        if self.stop.is_none() {
            self.stop = if cancel { Some(StopReason::Cancelled) } else { self.limit_reached() };
        }
    }

    /// The text with any held-back bytes flushed.
    pub fn finish(&mut self) -> String {
        let rest = self.stream.finish();
        self.text.push_str(&rest);
        std::mem::take(&mut self.text)
    }
}
