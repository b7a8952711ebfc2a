//! The `<think>` split: [`ReasoningSplitter`] divides a reasoning model's
//! output into reasoning (between `<think>` and `</think>`) and content, as
//! DeepSeek's API does. Text arrives in pieces, so a tag may be cut between
//! two pieces: a piece's tail that could begin a tag is held back until the
//! next piece decides.

use super::{partial_marker_len, ChoiceDelta};

const START: &str = "<think>";
const END: &str = "</think>";

/// Sorts one choice's text into reasoning and content, piece by piece.
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    enabled: bool,
    inside: bool,
    /// A reasoning section was opened once; the model reasons once, at the start.
    opened: bool,
    held: String,
}

impl ReasoningSplitter {
    /// `enabled`: the model has think tags at all; `starts_inside`: the prompt
    /// already opened `<think>`, so the output begins inside the reasoning.
    pub fn new(enabled: bool, starts_inside: bool) -> Self {
        ReasoningSplitter {
            enabled,
            inside: enabled && starts_inside,
            opened: enabled && starts_inside,
            held: String::new(),
        }
    }

    /// Whether the text pushed so far ends inside the reasoning.
    pub fn inside(&self) -> bool {
        self.inside
    }

    /// Sorts the next piece of text; a possible tag at its end is held back.
    pub fn push(&mut self, text: &str) -> ChoiceDelta {
        let mut out = ChoiceDelta::default();
        if !self.enabled {
            out.content.push_str(text);
            return out;
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        let mut rest = buf.as_str();
        loop {
            if self.inside {
                if let Some(at) = rest.find(END) {
                    out.reasoning.push_str(&rest[..at]);
                    rest = &rest[at + END.len()..];
                    self.inside = false;
                    continue;
                }
                let keep = partial_marker_len(rest, [END]);
                out.reasoning.push_str(&rest[..rest.len() - keep]);
                self.held = rest[rest.len() - keep..].to_string();
            } else if !self.opened {
                if let Some(at) = rest.find(START) {
                    out.content.push_str(&rest[..at]);
                    rest = &rest[at + START.len()..];
                    self.inside = true;
                    self.opened = true;
                    continue;
                }
                let keep = partial_marker_len(rest, [START]);
                out.content.push_str(&rest[..rest.len() - keep]);
                self.held = rest[rest.len() - keep..].to_string();
            } else {
                out.content.push_str(rest);
            }
            return out;
        }
    }

    /// Releases held-back text at the end of the output.
    pub fn finish(&mut self) -> ChoiceDelta {
        let held = std::mem::take(&mut self.held);
        let mut out = ChoiceDelta::default();
        if self.inside {
            out.reasoning = held;
        } else {
            out.content = held;
        }
        out
    }
}

/// Whether a rendered prompt leaves the model inside a `<think>` section
/// (R1's newer template and V3.1's thinking mode end the prompt with it).
pub fn prompt_opens_reasoning(prompt: &str) -> bool {
    match prompt.rfind(START) {
        Some(at) => prompt[at + START.len()..].trim().is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(splitter: &mut ReasoningSplitter, pieces: &[&str]) -> ChoiceDelta {
        let mut all = ChoiceDelta::default();
        for piece in pieces {
            let s = splitter.push(piece);
            all.reasoning += &s.reasoning;
            all.content += &s.content;
        }
        let s = splitter.finish();
        all.reasoning += &s.reasoning;
        all.content += &s.content;
        all
    }

    #[test]
    fn think_section_goes_to_reasoning_even_with_tags_cut_in_pieces() {
        let mut s = ReasoningSplitter::new(true, false);
        let out = run(
            &mut s,
            &[
                "<th",
                "ink>let me",
                " see</",
                "thi",
                "nk>The answer",
                " is 4",
            ],
        );
        assert_eq!(out.reasoning, "let me see");
        assert_eq!(out.content, "The answer is 4");
    }

    #[test]
    fn prompt_that_opens_think_starts_inside() {
        assert!(prompt_opens_reasoning("<｜Assistant｜><think>\n"));
        assert!(!prompt_opens_reasoning("<｜Assistant｜></think>"));
        assert!(!prompt_opens_reasoning("<think>x</think>answer"));
        let mut s = ReasoningSplitter::new(true, true);
        let out = run(&mut s, &["hmm</think>", "ok"]);
        assert_eq!(
            (out.reasoning.as_str(), out.content.as_str()),
            ("hmm", "ok")
        );
    }

    #[test]
    fn unfinished_reasoning_and_disabled_models() {
        let mut s = ReasoningSplitter::new(true, true);
        let out = run(&mut s, &["still thinking </thi"]);
        assert_eq!(out.reasoning, "still thinking </thi");
        assert_eq!(out.content, "");
        let mut s = ReasoningSplitter::new(false, true);
        let out = run(&mut s, &["<think>a</think>b"]);
        assert_eq!(out.content, "<think>a</think>b");
    }

    #[test]
    fn a_second_think_tag_is_plain_content() {
        let mut s = ReasoningSplitter::new(true, false);
        let out = run(&mut s, &["<think>a</think>b <think>c"]);
        assert_eq!(out.reasoning, "a");
        assert_eq!(out.content, "b <think>c");
        let mut s = ReasoningSplitter::new(true, false);
        let out = run(&mut s, &["x <", "y"]);
        assert_eq!(out.content, "x <y");
    }
}
