//! Constrained decoding: a sequence's tokens limited to those a grammar
//! allows, so that `response_format`'s JSON, a vLLM `structured_outputs`
//! regex or choice, or a required tool call comes out well-formed by
//! construction. The grammar engine is `llguidance`, as in vLLM, SGLang and
//! mistral.rs; this module only connects it to the engine.
//!
//! - [`Grammars`] (one per model) holds llguidance's parser factory over a
//!   token trie built from the model's own [`TokenTable`]: added tokens that
//!   are special (or look like `<...>`) can only be written by a grammar
//!   that names them, never by a text rule.
//! - [`Grammars::compile`] turns a [`GrammarSpec`] into a [`Grammar`], or
//!   says why it cannot (a caller reports that as a 400 on its field).
//! - A [`Grammar`] travels in the request; the worker makes a
//!   [`SeqConstraint`] of it per sequence. Each step the worker computes the
//!   masks of the sequences about to sample on a second thread while the
//!   forward pass runs, applies each to its own sequence's logits only, and
//!   commits the sampled token.
//! - A grammar may start after a given token (`</think>`): thinking stays
//!   free, the answer is constrained.

pub mod tool_calls;

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};

use crate::token_table::TokenTable;
use crate::tokenizer::Tokenizer;
pub use tool_calls::{FunctionSpec, ToolCallGrammar};

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON matching a JSON schema (an object).
    JsonSchema(Value),
    /// Text matching a regular expression (Rust `regex` syntax, whole match).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
    /// The family's tool-call markup, arguments matching each function's
    /// parameter schema.
    ToolCalls(ToolCallGrammar),
}

/// JSON as the models write it: `, ` or `,` between items, `: ` or `:`
/// after keys, and no other whitespace, so a model cannot spin on blanks
/// between tokens. A schema's own top-level `x-guidance` overrides it.
fn json_options() -> Value {
    json!({
        "item_separator": ", ?",
        "key_separator": ": ?",
        "whitespace_flexible": false,
    })
}

/// `schema` with [`json_options`], unless it sets its own.
pub(crate) fn with_json_options(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(json_options);
    }
    schema
}

/// The grammar engine for one model's vocabulary.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    /// Added tokens that only a grammar naming them may write, by text.
    special: Vec<(String, u32)>,
}

impl fmt::Debug for Grammars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammars")
            .field(
                "vocab_size",
                &self.factory.tok_env().tok_trie().vocab_size(),
            )
            .finish()
    }
}

/// The token environment llguidance works in: the trie of every token's
/// bytes, and the model's tokenizer for text a grammar forces.
struct TokenEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokenEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Whether an added token is one text may not contain: marked special, or
/// shaped like a control token (`<think>`, `<｜tool▁sep｜>`, `<|im_end|>`).
fn is_control(text: &str, special: bool) -> bool {
    special || (text.len() > 2 && text.starts_with('<') && text.ends_with('>'))
}

impl Grammars {
    /// The engine for `tokenizer`'s vocabulary (ids `0..table.len()`, the
    /// logits' width at least), ending at the model's end-of-sequence ids.
    pub fn new(tokenizer: Arc<Tokenizer>, table: &TokenTable) -> Result<Self, String> {
        let mut special = Vec::new();
        let words: Vec<Vec<u8>> = (0..table.len() as u32)
            .map(|id| {
                let bytes = table.bytes(id);
                let text = String::from_utf8_lossy(bytes);
                if table.is_added(id) && is_control(&text, table.is_special(id)) {
                    special.push((text.into_owned(), id));
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend_from_slice(bytes);
                    word
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let eos = tokenizer.eos_token_ids().to_vec();
        let mut info = TokRxInfo::new(words.len() as u32, eos.first().copied().unwrap_or(0));
        info.tok_bos = tokenizer.bos_token_id();
        let mut trie = TokTrie::from(&info, &words);
        if !eos.is_empty() {
            trie = trie.with_eos_tokens(&eos);
        }
        let env: TokEnv = Arc::new(TokenEnv { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        // Errors name the rule at fault, not the whole grammar and a token dump.
        factory.limits_mut().verbose_errors = false;
        special.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(Grammars {
            factory: Arc::new(factory),
            special,
        })
    }

    /// Compiles `spec`; an error says what in it llguidance refused. A
    /// grammar with `start_after` is free until that token is generated.
    pub fn compile(&self, spec: &GrammarSpec, start_after: Option<u32>) -> Result<Grammar, String> {
        let (grammar, source) = self.top_level(spec)?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        Ok(Grammar {
            parser,
            source: source.into(),
            start_after,
        })
    }

    fn top_level(&self, spec: &GrammarSpec) -> Result<(TopLevelGrammar, String), String> {
        Ok(match spec {
            GrammarSpec::JsonObject => {
                let schema = with_json_options(json!({"type": "object"}));
                (
                    TopLevelGrammar::from_json_schema(schema),
                    "json_object".into(),
                )
            }
            GrammarSpec::JsonSchema(schema) => {
                if !schema.is_object() {
                    return Err("a JSON schema must be an object".into());
                }
                let schema = with_json_options(schema.clone());
                let source = format!("json_schema {schema}");
                (TopLevelGrammar::from_json_schema(schema), source)
            }
            GrammarSpec::Regex(rx) => (TopLevelGrammar::from_regex(rx), format!("regex {rx}")),
            GrammarSpec::Choice(choices) => {
                if choices.is_empty() {
                    return Err("there must be at least one choice".into());
                }
                let alternatives: Vec<String> = choices.iter().map(|c| self.literal(c)).collect();
                let lark = format!("start: {}\n", alternatives.join(" | "));
                (TopLevelGrammar::from_lark(lark.clone()), lark)
            }
            GrammarSpec::Lark(lark) => (TopLevelGrammar::from_lark(lark.clone()), lark.clone()),
            GrammarSpec::ToolCalls(calls) => {
                let lark = calls.lark(self)?;
                (TopLevelGrammar::from_lark(lark.clone()), lark)
            }
        })
    }

    /// `text` as a Lark expression producing exactly its tokens: control
    /// tokens inside it by id (`<[128806]>`), the rest as strings.
    pub(crate) fn literal(&self, text: &str) -> String {
        let mut parts = Vec::new();
        let mut plain = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some((t, id)) = self
                .special
                .iter()
                .find(|(t, _)| rest.starts_with(t.as_str()))
            {
                if !plain.is_empty() {
                    parts.push(lark_string(&std::mem::take(&mut plain)));
                }
                parts.push(format!("<[{id}]>"));
                rest = &rest[t.len()..];
            } else {
                plain.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !plain.is_empty() || parts.is_empty() {
            parts.push(lark_string(&plain));
        }
        if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            format!("({})", parts.join(" "))
        }
    }
}

/// A Lark string literal: JSON string syntax, DEL escaped too.
fn lark_string(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
    quoted.replace('\u{7f}', "\\u007f")
}

/// A compiled grammar, ready to start a sequence's [`SeqConstraint`].
#[derive(Clone)]
pub struct Grammar {
    parser: TokenParser,
    /// What it was compiled from, for logs and comparisons.
    source: Arc<str>,
    start_after: Option<u32>,
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammar")
            .field("source", &self.source)
            .field("start_after", &self.start_after)
            .finish()
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.start_after == other.start_after
    }
}

impl Grammar {
    /// The grammar's text (Lark, a regex, or the JSON schema).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A fresh constraint for one sequence.
    pub fn start(&self) -> SeqConstraint {
        SeqConstraint {
            matcher: Matcher::new(Ok(self.parser.clone())),
            waiting_for: self.start_after,
            mask: None,
            ready: false,
        }
    }
}

/// What committing a token did to a sequence's constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The sequence may go on.
    Continue,
    /// The grammar is complete: nothing may follow.
    Complete,
    /// The token broke the grammar, or the grammar failed (the reason).
    Failed(String),
}

/// One sequence's constraint: its matcher, and the mask for its next token.
pub struct SeqConstraint {
    matcher: Matcher,
    /// The token after which the grammar starts; `None` once it has.
    waiting_for: Option<u32>,
    /// The allowed tokens at this step (computed ahead of sampling).
    mask: Option<SimpleVob>,
    /// Whether `mask` is this step's.
    ready: bool,
}

impl fmt::Debug for SeqConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqConstraint")
            .field("waiting_for", &self.waiting_for)
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Clone for SeqConstraint {
    /// An independent copy (a forked choice): the copies' masks can be
    /// computed at once on different threads.
    fn clone(&self) -> Self {
        SeqConstraint {
            matcher: self.matcher.deep_clone(),
            waiting_for: self.waiting_for,
            mask: self.mask.clone(),
            ready: self.ready,
        }
    }
}

impl SeqConstraint {
    /// Whether the grammar applies to the next token.
    pub fn is_active(&self) -> bool {
        self.waiting_for.is_none()
    }

    /// Computes the next token's mask (when active), unless this step's is
    /// there already. A failure leaves no mask; it shows when the token is
    /// committed.
    pub fn prepare(&mut self) {
        if self.ready || !self.is_active() {
            return;
        }
        self.ready = true;
        self.mask = None;
        if !self.matcher.is_stopped() {
            self.mask = self.matcher.compute_mask().ok();
        }
    }

    /// The mask computed for this step, if any.
    pub fn mask(&self) -> Option<&SimpleVob> {
        self.mask.as_ref()
    }

    /// Sets every token the mask forbids to -inf in `logits`; ids past the
    /// mask (logit padding beyond the vocabulary) too. Computes the mask
    /// first if [`Self::prepare`] was not called this step.
    pub fn apply(&mut self, logits: &mut [f32]) {
        self.prepare();
        let Some(mask) = &self.mask else { return };
        for (t, l) in logits.iter_mut().enumerate() {
            if t >= mask.len() || !mask.is_allowed(t as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Records the sampled `token`.
    pub fn commit(&mut self, token: u32) -> Committed {
        self.mask = None;
        self.ready = false;
        if let Some(start) = self.waiting_for {
            if token == start {
                self.waiting_for = None;
            }
            return Committed::Continue;
        }
        if let Err(e) = self.matcher.consume_token(token) {
            return Committed::Failed(e.to_string());
        }
        if self.matcher.is_stopped() {
            let reason = self.matcher.stop_reason();
            return if reason.is_ok() {
                Committed::Complete
            } else {
                Committed::Failed(format!("the grammar stopped: {reason}"))
            };
        }
        Committed::Continue
    }
}
