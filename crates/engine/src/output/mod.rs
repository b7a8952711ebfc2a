//! Everything that turns generated token ids into the text a client sees,
//! as a pipeline of stages per choice:
//!
//! 1. [`detokenize`]: ids to text pieces that never end in half a character
//!    ([`IncrementalDecoder`]);
//! 2. [`stop`]: the text cut at the first stop string ([`StopMatcher`]);
//! 3. [`reasoning`]: the text sorted into reasoning and content at the
//!    `<think>` tags ([`ReasoningSplitter`]);
//! 4. [`tool_calls`]: the content taken apart into text and tool calls, per
//!    family's syntax ([`ToolCallParser`], [`ToolCallFormat`]). Not yet wired
//!    into the server: nothing calls it outside its tests.
//!
//! Stages 1 and 2 run on the engine's worker thread, as [`SeqText`]: a stop
//! string ends the sequence there, and the request's events carry the text
//! that is final. Stage 3 runs where the events are read, as
//! [`ChoiceOutput`], whose output is a [`ChoiceDelta`]: a later stage (a
//! tool-call parser) adds itself there and its field to the delta.

pub mod detokenize;
pub mod reasoning;
pub mod stop;
pub mod tool_calls;

pub use detokenize::IncrementalDecoder;
pub use reasoning::{prompt_opens_reasoning, ReasoningSplitter};
pub use stop::{StopMatcher, StopOutcome};
pub use tool_calls::{Parsed, ParsedCall, ToolCallFormat, ToolCallParser, ToolEvent};

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// The length of the longest end of `text` that is a proper start of one of
/// `markers`: text the stages hold back because it may still grow into a
/// marker (a stop string, a `<think>` tag, a tool-call section).
fn partial_marker_len<'m>(text: &str, markers: impl IntoIterator<Item = &'m str>) -> usize {
    markers
        .into_iter()
        .flat_map(|m| m.char_indices().skip(1).map(move |(k, _)| &m[..k]))
        .filter(|start| text.ends_with(start))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// The engine's side of one sequence's output: its ids decoded and cut at
/// the first stop string.
#[derive(Debug, Clone)]
pub struct SeqText {
    decoder: IncrementalDecoder,
    stop: StopMatcher,
}

impl SeqText {
    /// The text that follows `prompt`, cut at the first of `stops`.
    pub fn new(prompt: &[u32], skip_special_tokens: bool, stops: &[String]) -> Self {
        SeqText {
            decoder: IncrementalDecoder::with_prompt(prompt, skip_special_tokens),
            stop: StopMatcher::new(stops.iter().cloned()),
        }
    }

    /// Add the next generated id; returns the text that became final.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<StopOutcome> {
        let piece = self.decoder.push(tokenizer, id)?.unwrap_or_default();
        Ok(self.stop.push(&piece))
    }

    /// The sequence ended: everything still held back, unless a stop string
    /// completes in it. Held text that fails to decode is dropped.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> StopOutcome {
        let rest = self
            .decoder
            .finish(tokenizer)
            .ok()
            .flatten()
            .unwrap_or_default();
        match self.stop.push(&rest) {
            StopOutcome::Continue(mut text) => {
                text.push_str(&self.stop.finish());
                StopOutcome::Continue(text)
            }
            stopped => stopped,
        }
    }
}

/// What one piece of a choice's text adds to each part of the answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChoiceDelta {
    /// Text between `<think>` and `</think>`.
    pub reasoning: String,
    /// The answer proper.
    pub content: String,
}

impl ChoiceDelta {
    /// Whether it adds nothing.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }

    fn append(&mut self, more: ChoiceDelta) {
        self.reasoning.push_str(&more.reasoning);
        self.content.push_str(&more.content);
    }
}

/// The reader's side of one choice's output: the final text of each event
/// sorted into a [`ChoiceDelta`], with the tokens spent reasoning counted.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    splitter: ReasoningSplitter,
    reasoning_tokens: usize,
}

impl ChoiceOutput {
    /// `reasoning`: the model has think tags; `starts_inside`: the prompt
    /// opened `<think>` (see [`prompt_opens_reasoning`]).
    pub fn new(reasoning: bool, starts_inside: bool) -> Self {
        ChoiceOutput {
            splitter: ReasoningSplitter::new(reasoning, starts_inside),
            reasoning_tokens: 0,
        }
    }

    /// All text is content (a plain completion).
    pub fn plain() -> Self {
        Self::new(false, false)
    }

    /// A token's text; the token counts as reasoning if it came inside `<think>`.
    pub fn token(&mut self, text: &str) -> ChoiceDelta {
        if self.splitter.inside() {
            self.reasoning_tokens += 1;
        }
        self.splitter.push(text)
    }

    /// The choice's last text; releases whatever was held back.
    pub fn finish(&mut self, text: &str) -> ChoiceDelta {
        let mut delta = self.splitter.push(text);
        delta.append(self.splitter.finish());
        delta
    }

    /// Tokens generated inside `<think>`.
    pub fn reasoning_tokens(&self) -> usize {
        self.reasoning_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_output_counts_tokens_that_start_inside_think_as_reasoning() {
        let mut out = ChoiceOutput::new(true, false);
        let mut all = ChoiceDelta::default();
        for text in ["<think>", "a", "b</think>", "c"] {
            all.append(out.token(text));
        }
        all.append(out.finish("d"));
        assert_eq!(all.reasoning, "ab");
        assert_eq!(all.content, "cd");
        // "a" and "b</think>" came inside; the tag's own token did not.
        assert_eq!(out.reasoning_tokens(), 2);
    }

    #[test]
    fn plain_choice_output_is_all_content() {
        let mut out = ChoiceOutput::plain();
        assert_eq!(out.token("<think>x").content, "<think>x");
        assert_eq!(out.finish("</think>").content, "</think>");
        assert_eq!(out.reasoning_tokens(), 0);
    }
}
