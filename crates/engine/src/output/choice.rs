//! The reader's side of one choice's output, [`ChoiceOutput`]: the final
//! text of each event goes through
//!
//! 1. the special-token filter (only when the request keeps special tokens
//!    for the tool-call parser: the other special tokens are taken out
//!    again, so none reaches the client);
//! 2. the `<think>` split ([`ReasoningSplitter`]);
//! 3. the tool-call parser on the content ([`ToolCallParser`]), when the
//!    request has tools,
//!
//! and comes out as a [`ChoiceDelta`].

use std::collections::HashSet;
use std::sync::Arc;

use super::tool_calls::{ToolCallFormat, ToolCallParser, ToolEvent};
use super::{partial_marker_len, ReasoningSplitter};
use crate::tokenizer::Tokenizer;

/// A piece of one tool call, in the order a stream sends them: its start,
/// then its arguments' text in fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallDelta {
    /// Call `index` (counted from 0 within the choice) of function `name` begins.
    Start { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text of an object).
    Arguments { index: usize, fragment: String },
}

/// What one piece of a choice's text adds to each part of the answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChoiceDelta {
    /// Text between `<think>` and `</think>`.
    pub reasoning: String,
    /// The answer proper, without tool-call markup.
    pub content: String,
    /// Tool calls taken out of the content.
    pub tool_calls: Vec<ToolCallDelta>,
}

impl ChoiceDelta {
    /// Whether it adds nothing.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.tool_calls.is_empty()
    }

    pub(crate) fn append(&mut self, more: ChoiceDelta) {
        self.reasoning.push_str(&more.reasoning);
        self.content.push_str(&more.content);
        self.tool_calls.extend(more.tool_calls);
    }
}

/// What a request asks of the tool-call stage.
#[derive(Debug, Clone)]
pub struct ToolCallOptions {
    /// The model's syntax.
    pub format: ToolCallFormat,
    /// The request's functions: a call of any other is text.
    pub functions: HashSet<String>,
    /// `parallel_tool_calls`: false keeps only the first call; later calls
    /// are dropped (not returned as text).
    pub parallel: bool,
}

/// The special tokens to take out of a text decoded with them kept for the
/// tool-call parser: every special token of `tokenizer` but those the
/// format's markup is made of and the `<think>` tags.
pub fn hidden_special_tokens(tokenizer: &Tokenizer, format: ToolCallFormat) -> Vec<String> {
    let markers = format.markers();
    let mut hidden: Vec<String> = tokenizer
        .inner()
        .get_added_tokens_decoder()
        .into_values()
        .filter(|t| t.special && !t.content.is_empty())
        .map(|t| t.content)
        .filter(|t| !matches!(t.as_str(), "<think>" | "</think>"))
        .filter(|t| !markers.iter().any(|m| m.contains(t.as_str())))
        .collect();
    hidden.sort_unstable();
    hidden.dedup();
    hidden
}

/// Takes the text of given special tokens out of a stream of text; the end
/// of a piece that may begin one is held back.
#[derive(Debug, Clone, Default)]
struct SpecialFilter {
    hidden: Arc<[String]>,
    /// The characters the hidden tokens begin with: text without any of
    /// them (most of it) passes untouched, however many tokens there are.
    starts: Vec<char>,
    held: String,
}

impl SpecialFilter {
    fn new(hidden: Arc<[String]>) -> Self {
        let mut starts: Vec<char> = hidden.iter().filter_map(|h| h.chars().next()).collect();
        starts.sort_unstable();
        starts.dedup();
        SpecialFilter {
            hidden,
            starts,
            held: String::new(),
        }
    }

    fn push(&mut self, text: &str) -> String {
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        if !buf.contains(|c| self.starts.binary_search(&c).is_ok()) {
            return buf;
        }
        let mut out = String::with_capacity(buf.len());
        let mut rest = buf.as_str();
        // The earliest hidden token, the longest where several start there.
        while let Some((at, len)) = self
            .hidden
            .iter()
            .filter_map(|h| rest.find(h.as_str()).map(|at| (at, h.len())))
            .min_by_key(|&(at, len)| (at, std::cmp::Reverse(len)))
        {
            out.push_str(&rest[..at]);
            rest = &rest[at + len..];
        }
        let keep = partial_marker_len(rest, self.hidden.iter().map(String::as_str));
        out.push_str(&rest[..rest.len() - keep]);
        self.held = rest[rest.len() - keep..].to_owned();
        out
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The tool-call stage: the parser, and `parallel_tool_calls`.
#[derive(Debug, Clone)]
struct ToolStage {
    parser: ToolCallParser,
    parallel: bool,
}

impl ToolStage {
    fn take(&self, events: Vec<ToolEvent>, out: &mut ChoiceDelta) {
        for event in events {
            match event {
                ToolEvent::Content(text) => out.content.push_str(&text),
                ToolEvent::CallStart { index, name } if self.parallel || index == 0 => {
                    out.tool_calls.push(ToolCallDelta::Start { index, name })
                }
                ToolEvent::Arguments { index, fragment } if self.parallel || index == 0 => out
                    .tool_calls
                    .push(ToolCallDelta::Arguments { index, fragment }),
                // A call after the first with `parallel_tool_calls: false`.
                ToolEvent::CallStart { .. } | ToolEvent::Arguments { .. } => {}
            }
        }
    }
}

/// The reader's side of one choice's output: the final text of each event
/// sorted into a [`ChoiceDelta`], with the tokens spent reasoning counted.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    specials: SpecialFilter,
    splitter: ReasoningSplitter,
    tools: Option<ToolStage>,
    reasoning_tokens: usize,
}

impl ChoiceOutput {
    /// `reasoning`: the model has think tags; `starts_inside`: the prompt
    /// opened `<think>` (see [`super::prompt_opens_reasoning`]).
    pub fn new(reasoning: bool, starts_inside: bool) -> Self {
        ChoiceOutput {
            specials: SpecialFilter::default(),
            splitter: ReasoningSplitter::new(reasoning, starts_inside),
            tools: None,
            reasoning_tokens: 0,
        }
    }

    /// All text is content (a plain completion).
    pub fn plain() -> Self {
        Self::new(false, false)
    }

    /// Takes tool calls out of the content.
    pub fn with_tool_calls(mut self, options: ToolCallOptions) -> Self {
        self.tools = Some(ToolStage {
            parser: ToolCallParser::new(options.format).only_functions(options.functions),
            parallel: options.parallel,
        });
        self
    }

    /// Takes the text of these special tokens out (see [`hidden_special_tokens`]).
    pub fn hiding(mut self, special_tokens: Arc<[String]>) -> Self {
        self.specials = SpecialFilter::new(special_tokens);
        self
    }

    /// A token's text; the token counts as reasoning if it came inside `<think>`.
    pub fn token(&mut self, text: &str) -> ChoiceDelta {
        if self.splitter.inside() {
            self.reasoning_tokens += 1;
        }
        let text = self.specials.push(text);
        let split = self.splitter.push(&text);
        self.parse(split, false)
    }

    /// The choice's last text; releases whatever was held back.
    pub fn finish(&mut self, text: &str) -> ChoiceDelta {
        let mut text = self.specials.push(text);
        text.push_str(&self.specials.finish());
        let mut split = self.splitter.push(&text);
        split.append(self.splitter.finish());
        self.parse(split, true)
    }

    /// The tool-call stage on a delta's content.
    fn parse(&mut self, split: ChoiceDelta, last: bool) -> ChoiceDelta {
        let Some(tools) = &mut self.tools else {
            return split;
        };
        let mut events = tools.parser.push(&split.content);
        if last {
            events.extend(tools.parser.finish());
        }
        let mut out = ChoiceDelta {
            reasoning: split.reasoning,
            ..ChoiceDelta::default()
        };
        tools.take(events, &mut out);
        out
    }

    /// Tokens generated inside `<think>`.
    pub fn reasoning_tokens(&self) -> usize {
        self.reasoning_tokens
    }
}

#[cfg(test)]
mod tests;
