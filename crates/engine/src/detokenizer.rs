//! Streaming text out of generated token ids.
//!
//! [`IncrementalDecoder`] turns ids arriving one at a time into text pieces
//! whose concatenation is exactly the text of decoding all ids at once. A
//! piece never ends in half a character: with a byte-level BPE one token can
//! hold part of a character's UTF-8 bytes, and decoding such a prefix gives
//! U+FFFD, so text is held back until its bytes complete. Tokenizers whose
//! decoders add or strip spaces depending on context (SentencePiece's `▁`,
//! WordPiece's `##`) are handled by always decoding a short window of
//! recent ids: the text of the window before the new ids and after differ
//! only by the new text. (One decoder breaks that: SentencePiece byte
//! fallback decodes a run of byte tokens that is not valid UTF-8 as all
//! U+FFFD, valid bytes included. Characters already sent stay as they were,
//! so there the stream differs from the one-shot decode, and it goes on.)
//!
//! [`StopMatcher`] holds back text that could be the start of a stop string
//! and cuts the stream at the first stop string, across piece boundaries.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// Ids of the prompt kept as context for the first generated ids, so that
/// a decoder that strips a leading space does not strip it from them.
const CONTEXT_IDS: usize = 5;

/// Decodes a stream of token ids into text pieces. One per sequence.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    /// Ids from the start of the decode window; `ids[..read]` are emitted.
    ids: Vec<u32>,
    /// Ids in `ids[..read]` whose text is already out.
    read: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    /// A decoder for a sequence with no earlier ids.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            ids: Vec::new(),
            read: 0,
            skip_special_tokens,
        }
    }

    /// A decoder whose first output follows `prompt`: the last few prompt
    /// ids serve as context (they are never emitted).
    pub fn with_prompt(prompt: &[u32], skip_special_tokens: bool) -> Self {
        let context = &prompt[prompt.len().saturating_sub(CONTEXT_IDS)..];
        Self {
            ids: context.to_vec(),
            read: context.len(),
            skip_special_tokens,
        }
    }

    /// Whether special tokens are left out of the text.
    pub fn skip_special_tokens(&self) -> bool {
        self.skip_special_tokens
    }

    /// Add one id; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.emit(tokenizer, false)
    }

    /// Add several ids at once; returns the text they complete, if any.
    pub fn extend(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<Option<String>> {
        self.ids.extend_from_slice(ids);
        self.emit(tokenizer, false)
    }

    /// The end of the sequence: returns whatever text is still held back
    /// (an incomplete character comes out as U+FFFD, as a full decode gives it).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        self.emit(tokenizer, true)
    }

    fn emit(&mut self, tokenizer: &Tokenizer, finish: bool) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let before = tokenizer.decode(&self.ids[..self.read], self.skip_special_tokens)?;
        let after = tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        let new = match after.strip_prefix(before.as_str()) {
            Some(new) => new.to_owned(),
            // The decoder rewrote text already sent (a byte-fallback run
            // that turned out invalid UTF-8 replaces even its valid bytes).
            // It cannot be taken back: go on with the new ids' own text.
            None => tokenizer.decode(&self.ids[self.read..], self.skip_special_tokens)?,
        };
        if new.is_empty() || (!finish && new.ends_with(REPLACEMENT)) {
            return Ok(None);
        }
        // Slide the window: what was new becomes the context.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(Some(new))
    }
}

/// What [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that can no longer be part of a stop string (may be empty).
    Continue(String),
    /// A stop string matched: `text` is what came before it; the stream ends.
    Stopped { text: String, stop: String },
}

/// Cuts a text stream at the first stop string.
///
/// The first match is the one that completes earliest in the stream; of
/// matches completing at the same point, the longest. The stop string
/// itself is never emitted. Text that could still grow into a stop string is
/// held until it cannot, or until [`StopMatcher::finish`].
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Matches against `stops`; empty stop strings are ignored.
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        Self {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feed the next piece of text. After a stop, everything is swallowed.
    pub fn push(&mut self, piece: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Continue(String::new());
        }
        let start = self.held.len();
        self.held.push_str(piece);
        if let Some((at, stop)) = self.first_match(start) {
            self.stopped = true;
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return StopOutcome::Stopped { text, stop };
        }
        let keep = self.partial_suffix_len();
        let text = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        StopOutcome::Continue(text)
    }

    /// The end of the stream: release held text (no stop matched).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The match in `held` that ends first (longest on ties), as (start,
    /// stop). Only matches ending in the new text at `new_from..` can exist:
    /// anything earlier would have matched on an earlier push.
    fn first_match(&self, new_from: usize) -> Option<(usize, String)> {
        let mut best: Option<(usize, usize, &String)> = None; // (end, start, stop)
        for stop in &self.stops {
            // The earliest occurrence ending after `new_from`.
            let from = new_from.saturating_sub(stop.len() - 1);
            let from = (0..=from)
                .rev()
                .find(|i| self.held.is_char_boundary(*i))
                .unwrap_or(0);
            if let Some(pos) = self.held[from..].find(stop.as_str()) {
                let start = from + pos;
                let end = start + stop.len();
                let better = match best {
                    None => true,
                    Some((b_end, b_start, _)) => end < b_end || (end == b_end && start < b_start),
                };
                if better {
                    best = Some((end, start, stop));
                }
            }
        }
        best.map(|(_, start, stop)| (start, stop.clone()))
    }

    /// Length of the longest end of `held` that is a proper start of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let mut keep = 0;
        for stop in &self.stops {
            for (k, _) in stop.char_indices().skip(1) {
                if k > keep && self.held.ends_with(&stop[..k]) {
                    keep = k;
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped { text, .. } => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_not_emitted() {
        assert_eq!(
            run(&["</s>"], &["Hello <", "/", "s> world"]),
            ("Hello ".into(), true)
        );
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("a ST"), StopOutcome::Continue("a ".into()));
        assert_eq!(
            m.push("OP"),
            StopOutcome::Stopped {
                text: String::new(),
                stop: "STOP".into()
            }
        );
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("a ST"), StopOutcome::Continue("a ".into()));
        assert_eq!(m.push("ay"), StopOutcome::Continue("STay".into()));
    }

    #[test]
    fn earliest_completed_match_wins() {
        assert_eq!(run(&["abc", "b"], &["xabc"]), ("xa".into(), true));
        assert_eq!(run(&["c", "abc"], &["xab", "c"]), ("x".into(), true));
    }

    #[test]
    fn unfinished_stop_prefix_is_released_at_the_end() {
        assert_eq!(run(&["</s>"], &["end </"]), ("end </".into(), false));
    }
}
