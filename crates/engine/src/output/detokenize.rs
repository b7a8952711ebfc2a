//! Incremental detokenizing: [`IncrementalDecoder`] turns ids arriving one
//! at a time into text pieces whose concatenation is exactly the text of
//! decoding all ids at once. A piece never ends in half a character: with a
//! byte-level BPE one token can hold part of a character's UTF-8 bytes, and
//! decoding such a prefix gives U+FFFD, so text is held back until its bytes
//! complete. Tokenizers whose decoders add or strip spaces depending on
//! context (SentencePiece's `▁`, WordPiece's `##`) are handled by always
//! decoding a short window of recent ids: the text of the window before the
//! new ids and after differ only by the new text. (One decoder breaks that:
//! SentencePiece byte fallback decodes a run of byte tokens that is not
//! valid UTF-8 as all U+FFFD, valid bytes included. Characters already sent
//! stay as they were, so there the stream differs from the one-shot decode,
//! and it goes on.)
//!
//! `tokenizers`' own `DecodeStream` is not used: it has no prompt context
//! (a SentencePiece decoder strips the first generated token's space), no
//! end-of-stream flush, and fails where a decoder rewrites text already
//! sent; `tests/detokenizer.rs` shows each case.

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
