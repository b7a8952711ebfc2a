//! Everything that turns generated token ids into the text a client sees,
//! as a pipeline of stages per choice:
//!
//! 1. [`detokenize`]: ids to text pieces that never end in half a character
//!    ([`IncrementalDecoder`]);
//! 2. [`stop`]: the text cut at the first stop string ([`StopMatcher`]);
//! 3. [`reasoning`]: the text sorted into reasoning and content at the
//!    `<think>` tags ([`ReasoningSplitter`]);
//! 4. [`tool_calls`]: the content taken apart into text and tool calls, per
//!    family's syntax ([`ToolCallParser`], [`ToolCallFormat`]), when the
//!    request has tools.
//!
//! Stages 1 and 2 run on the engine's worker thread, as [`SeqText`]: a stop
//! string ends the sequence there, and the request's events carry the text
//! that is final. Stages 3 and 4 run where the events are read, as
//! [`ChoiceOutput`] ([`choice`]), whose output is a [`ChoiceDelta`] of
//! reasoning, content and [`ToolCallDelta`]s. Tool-call markup is made of
//! special tokens in some families, so a request with tools decodes with
//! special tokens kept; [`ChoiceOutput`] then takes every other special
//! token out again ([`hidden_special_tokens`]) before stage 3.

pub mod choice;
pub mod detokenize;
pub mod reasoning;
pub mod stop;
pub mod tool_calls;

pub use choice::{
    hidden_special_tokens, ChoiceDelta, ChoiceOutput, ToolCallDelta, ToolCallOptions,
};
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
