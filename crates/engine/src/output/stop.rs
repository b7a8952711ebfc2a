//! Stop strings: [`StopMatcher`] holds back text that could be the start of
//! a stop string and cuts the stream at the first stop string, across piece
//! boundaries.

use super::partial_marker_len;

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
        let keep = partial_marker_len(&self.held, self.stops.iter().map(String::as_str));
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
