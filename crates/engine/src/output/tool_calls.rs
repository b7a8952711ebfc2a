//! Tool calls out of the model's text: [`ToolCallParser`] takes the markup
//! each model family writes for its calls out of the content and returns the
//! calls as names and JSON argument texts, as OpenAI's `tool_calls`.
//!
//! Each format is the exact inverse of how the family's chat template renders
//! an assistant message's `tool_calls`:
//!
//! - [`ToolCallFormat::DeepSeekV3`] (V3, R1): `<｜tool▁calls▁begin｜>`, then per
//!   call `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` and a fenced
//!   `` ```json `` block before `<｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`;
//! - [`ToolCallFormat::DeepSeekV31`]: the same section, with
//!   `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>` per call;
//! - [`ToolCallFormat::Dsml`] (V3.2, V4): a `<｜DSML｜function_calls>` (V3.2)
//!   or `<｜DSML｜tool_calls>` (V4) block of `invoke` elements whose
//!   `parameter` elements carry a string (`string="true"`) or JSON value;
//! - [`ToolCallFormat::KimiK2`]: `<|tool_calls_section_begin|>`, then per call
//!   `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>ARGS<|tool_call_end|>`.
//!
//! A section of calls is parsed once its end marker has arrived; a section
//! that does not parse (bad JSON, unknown markup, a function the request did
//! not declare, see [`ToolCallParser::only_functions`]) or never ends comes
//! back as content, markup included, and is never an error. Text that could be
//! the start of a section is held back, so no markup leaks into content.
//! Arguments where the template wrote a JSON string holding the arguments'
//! text (V3, V3.1 and Kimi-K2 render `arguments | tojson`) are unwrapped.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::partial_marker_len;

/// A family's tool-call syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolCallFormat {
    /// DeepSeek-V3 and R1: the call's arguments in a fenced JSON block.
    DeepSeekV3,
    /// DeepSeek-V3.1: `NAME<｜tool▁sep｜>ARGS`.
    DeepSeekV31,
    /// DeepSeek-V3.2 and V4: DSML `invoke`/`parameter` elements.
    Dsml,
    /// Kimi-K2: `functions.NAME:IDX` calls.
    KimiK2,
}

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";

const DSML_INVOKE: &str = "<｜DSML｜invoke name=\"";
const DSML_INVOKE_END: &str = "</｜DSML｜invoke>";
const DSML_PARAM: &str = "<｜DSML｜parameter name=\"";
const DSML_PARAM_END: &str = "</｜DSML｜parameter>";

const KIMI_SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
const KIMI_SECTION_END: &str = "<|tool_calls_section_end|>";
const KIMI_CALL_BEGIN: &str = "<|tool_call_begin|>";
const KIMI_ARGS_BEGIN: &str = "<|tool_call_argument_begin|>";
const KIMI_CALL_END: &str = "<|tool_call_end|>";

/// (begin, end) markers of a section of calls. Where two begin at the same
/// place the longer wins: the DSML templates put a blank line before the
/// block, which belongs to the markup, not the content.
type Section = (&'static str, &'static str);

const DEEPSEEK_SECTIONS: &[Section] = &[(CALLS_BEGIN, CALLS_END)];
const DSML_SECTIONS: &[Section] = &[
    ("\n\n<｜DSML｜function_calls>", "</｜DSML｜function_calls>"),
    ("<｜DSML｜function_calls>", "</｜DSML｜function_calls>"),
    ("\n\n<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"),
    ("<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"),
];
const KIMI_SECTIONS: &[Section] = &[(KIMI_SECTION_BEGIN, KIMI_SECTION_END)];

impl ToolCallFormat {
    /// Every format.
    pub const ALL: [ToolCallFormat; 4] = [
        ToolCallFormat::DeepSeekV3,
        ToolCallFormat::DeepSeekV31,
        ToolCallFormat::Dsml,
        ToolCallFormat::KimiK2,
    ];

    /// The name a `--tool-call-parser` flag takes.
    pub fn name(self) -> &'static str {
        match self {
            ToolCallFormat::DeepSeekV3 => "deepseek_v3",
            ToolCallFormat::DeepSeekV31 => "deepseek_v31",
            ToolCallFormat::Dsml => "deepseek_v32",
            ToolCallFormat::KimiK2 => "kimi_k2",
        }
    }

    /// The format a chat template renders tool calls in, by its markers.
    pub fn detect(template_source: &str) -> Option<Self> {
        if template_source.contains("DSML") {
            Some(ToolCallFormat::Dsml)
        } else if template_source.contains(KIMI_CALL_BEGIN) {
            Some(ToolCallFormat::KimiK2)
        } else if template_source.contains(CALL_BEGIN) {
            if template_source.contains("```json") {
                Some(ToolCallFormat::DeepSeekV3)
            } else {
                Some(ToolCallFormat::DeepSeekV31)
            }
        } else {
            None
        }
    }

    /// Every marker the format writes: the tokens a tokenizer may hold as
    /// special ones and that the text must keep for the parser to see.
    pub fn markers(self) -> Vec<&'static str> {
        let calls: &[&'static str] = match self {
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => {
                &[CALL_BEGIN, CALL_END, SEP]
            }
            ToolCallFormat::Dsml => &[DSML_INVOKE, DSML_INVOKE_END, DSML_PARAM, DSML_PARAM_END],
            ToolCallFormat::KimiK2 => &[KIMI_CALL_BEGIN, KIMI_ARGS_BEGIN, KIMI_CALL_END],
        };
        self.sections()
            .iter()
            .flat_map(|&(begin, end)| [begin, end])
            .chain(calls.iter().copied())
            .collect()
    }

    fn sections(self) -> &'static [Section] {
        match self {
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => DEEPSEEK_SECTIONS,
            ToolCallFormat::Dsml => DSML_SECTIONS,
            ToolCallFormat::KimiK2 => KIMI_SECTIONS,
        }
    }

    /// The calls in a section's text between its markers; `None` if any of
    /// it is not well-formed.
    fn parse_section(self, inner: &str) -> Option<Vec<ParsedCall>> {
        match self {
            ToolCallFormat::DeepSeekV3 => deepseek_calls(inner, true),
            ToolCallFormat::DeepSeekV31 => deepseek_calls(inner, false),
            ToolCallFormat::Dsml => dsml_calls(inner),
            ToolCallFormat::KimiK2 => kimi_calls(inner),
        }
    }
}

impl fmt::Display for ToolCallFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ToolCallFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "deepseek_v3" | "deepseek_r1" => Ok(ToolCallFormat::DeepSeekV3),
            "deepseek_v31" | "deepseek_v3.1" => Ok(ToolCallFormat::DeepSeekV31),
            "deepseek_v32" | "deepseek_v3.2" | "deepseek_v4" | "dsml" => Ok(ToolCallFormat::Dsml),
            "kimi_k2" | "kimi" => Ok(ToolCallFormat::KimiK2),
            _ => Err(format!(
                "unknown tool-call parser {s:?}; expected one of deepseek_v3, deepseek_v31, \
                 deepseek_v32, kimi_k2"
            )),
        }
    }
}

/// One call as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    /// The arguments as compact JSON text (an object).
    pub arguments: String,
}

/// A whole text taken apart: the content around the calls, and the calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

/// What [`ToolCallParser`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text that is content.
    Content(String),
    /// A call begins; `index` counts calls from 0 across the whole text.
    CallStart { index: usize, name: String },
    /// More of call `index`'s arguments text.
    Arguments { index: usize, fragment: String },
}

/// Takes one choice's text apart into content and calls, piece by piece.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    format: ToolCallFormat,
    held: String,
    /// Inside a section: the index of its markers; `held` starts at its begin marker.
    section: Option<usize>,
    /// How much of `held` has been searched for the section's end marker,
    /// so that a long section is not searched again from its start.
    searched: usize,
    next_index: usize,
    /// The functions a call may name; `None`: any.
    functions: Option<HashSet<String>>,
}

impl ToolCallParser {
    pub fn new(format: ToolCallFormat) -> Self {
        ToolCallParser {
            format,
            held: String::new(),
            section: None,
            searched: 0,
            next_index: 0,
            functions: None,
        }
    }

    /// Only calls of `functions` (the request's tools) are calls: a section
    /// that names another function comes back as content, like one whose
    /// arguments are not JSON, so the client never gets a call it cannot run.
    pub fn only_functions(mut self, functions: HashSet<String>) -> Self {
        self.functions = Some(functions);
        self
    }

    fn known(&self, calls: &[ParsedCall]) -> bool {
        self.functions
            .as_ref()
            .is_none_or(|names| calls.iter().all(|c| names.contains(&c.name)))
    }

    pub fn format(&self) -> ToolCallFormat {
        self.format
    }

    /// The next piece of text; returns what became final.
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        self.held.push_str(piece);
        let mut events = Vec::new();
        self.drain(false, &mut events);
        events
    }

    /// The end of the text: held text, and a section that never ended, are content.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut events = Vec::new();
        self.drain(true, &mut events);
        self.section = None;
        let rest = std::mem::take(&mut self.held);
        if !rest.is_empty() {
            events.push(ToolEvent::Content(rest));
        }
        events
    }

    fn drain(&mut self, at_end: bool, events: &mut Vec<ToolEvent>) {
        let sections = self.format.sections();
        loop {
            match self.section {
                None => match self.find_begin(at_end) {
                    Begin::At(pos, which) => {
                        if pos > 0 {
                            events.push(ToolEvent::Content(self.held[..pos].to_owned()));
                            self.held.drain(..pos);
                        }
                        self.section = Some(which);
                        self.searched = 0;
                    }
                    Begin::Wait(keep) => {
                        let cut = self.held.len() - keep;
                        if cut > 0 {
                            events.push(ToolEvent::Content(self.held[..cut].to_owned()));
                            self.held.drain(..cut);
                        }
                        return;
                    }
                },
                Some(which) => {
                    let Some(&(begin, end)) = sections.get(which) else {
                        self.section = None;
                        continue;
                    };
                    // The end marker may have begun in the text searched before.
                    let mut from = begin.len().max(self.searched.saturating_sub(end.len()));
                    while !self.held.is_char_boundary(from) {
                        from -= 1;
                    }
                    let Some(at) = self.held.get(from..).and_then(|s| s.find(end)) else {
                        self.searched = self.held.len();
                        return;
                    };
                    let inner_end = from + at;
                    let raw_end = inner_end + end.len();
                    match self
                        .held
                        .get(begin.len()..inner_end)
                        .and_then(|inner| self.format.parse_section(inner))
                        .filter(|calls| self.known(calls))
                    {
                        Some(calls) => {
                            for call in calls {
                                let index = self.next_index;
                                self.next_index += 1;
                                events.push(ToolEvent::CallStart {
                                    index,
                                    name: call.name,
                                });
                                events.push(ToolEvent::Arguments {
                                    index,
                                    fragment: call.arguments,
                                });
                            }
                        }
                        None => events.push(ToolEvent::Content(self.held[..raw_end].to_owned())),
                    }
                    self.held.drain(..raw_end);
                    self.section = None;
                }
            }
        }
    }

    /// Where the first section begins in `held`, or how much of its end to
    /// hold back because it could still grow into a begin marker.
    fn find_begin(&self, at_end: bool) -> Begin {
        let sections = self.format.sections();
        let mut best: Option<(usize, usize, usize)> = None; // (pos, len, which)
        for (which, (begin, _)) in sections.iter().enumerate() {
            if let Some(pos) = self.held.find(begin) {
                let better = match best {
                    None => true,
                    Some((b_pos, b_len, _)) => pos < b_pos || (pos == b_pos && begin.len() > b_len),
                };
                if better {
                    best = Some((pos, begin.len(), which));
                }
            }
        }
        let keep = if at_end {
            0
        } else {
            partial_marker_len(&self.held, sections.iter().map(|&(begin, _)| begin))
        };
        match best {
            // A longer marker that starts earlier may still be arriving.
            Some((pos, _, _)) if keep > 0 && self.held.len() - keep < pos => Begin::Wait(keep),
            Some((pos, _, which)) => Begin::At(pos, which),
            None => Begin::Wait(keep),
        }
    }
}

enum Begin {
    At(usize, usize),
    Wait(usize),
}

/// A whole text taken apart; the same as feeding it to a [`ToolCallParser`]
/// in any pieces.
pub fn parse(format: ToolCallFormat, text: &str) -> Parsed {
    let mut parser = ToolCallParser::new(format);
    let mut events = parser.push(text);
    events.extend(parser.finish());
    collect(events)
}

/// The events of a stream gathered into the whole.
pub fn collect(events: impl IntoIterator<Item = ToolEvent>) -> Parsed {
    let mut parsed = Parsed::default();
    for event in events {
        match event {
            ToolEvent::Content(text) => parsed.content.push_str(&text),
            ToolEvent::CallStart { name, .. } => parsed.calls.push(ParsedCall {
                name,
                arguments: String::new(),
            }),
            ToolEvent::Arguments { index, fragment } => {
                if let Some(call) = parsed.calls.get_mut(index) {
                    call.arguments.push_str(&fragment);
                }
            }
        }
    }
    parsed
}

/// A function name as written, if it is one.
fn call_name(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| name.to_owned())
}

/// Arguments JSON text as compact JSON of an object; a JSON string holding
/// the object's text (a template's `arguments | tojson`) is unwrapped.
fn arguments_json(text: &str) -> Option<String> {
    let value = match serde_json::from_str::<Value>(text.trim()).ok()? {
        Value::String(inner) => serde_json::from_str::<Value>(&inner).ok()?,
        value => value,
    };
    if !value.is_object() {
        return None;
    }
    serde_json::to_string(&value).ok()
}

/// The calls of a `<｜tool▁calls▁begin｜>` section; `fenced`: V3's
/// `TYPE<｜tool▁sep｜>NAME\n```json\nARGS\n```` rather than V3.1's `NAME<｜tool▁sep｜>ARGS`.
fn deepseek_calls(inner: &str, fenced: bool) -> Option<Vec<ParsedCall>> {
    each_call(inner, CALL_BEGIN, CALL_END, |body| {
        let (head, tail) = body.split_once(SEP)?;
        let (name, args) = if fenced {
            if head.trim() != "function" {
                return None;
            }
            let (name, fence) = tail.split_once('\n')?;
            let args = fence.trim().strip_prefix("```json")?.strip_suffix("```")?;
            (name, args)
        } else {
            (head, tail)
        };
        Some(ParsedCall {
            name: call_name(name)?,
            arguments: arguments_json(args)?,
        })
    })
}

/// The calls between `begin` and `end` markers, with only whitespace
/// between them, each read by `one`; `None` if any is not well-formed.
fn each_call(
    inner: &str,
    begin: &str,
    end: &str,
    one: impl Fn(&str) -> Option<ParsedCall>,
) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (body, after) = rest.strip_prefix(begin)?.split_once(end)?;
        rest = after.trim_start();
        calls.push(one(body)?);
    }
    (!calls.is_empty()).then_some(calls)
}

/// The calls of a Kimi-K2 section.
fn kimi_calls(inner: &str) -> Option<Vec<ParsedCall>> {
    each_call(inner, KIMI_CALL_BEGIN, KIMI_CALL_END, |body| {
        let (id, args) = body.split_once(KIMI_ARGS_BEGIN)?;
        let id = id.trim();
        let id = id.strip_prefix("functions.").unwrap_or(id);
        let name = match id.rsplit_once(':') {
            Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => id,
        };
        Some(ParsedCall {
            name: call_name(name)?,
            arguments: arguments_json(args)?,
        })
    })
}

/// The calls of a DSML block: `invoke` elements of `parameter` elements.
fn dsml_calls(inner: &str) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest.strip_prefix(DSML_INVOKE)?.split_once("\">")?;
        rest = after;
        let mut args = Map::new();
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix(DSML_INVOKE_END) {
                rest = after.trim_start();
                break;
            }
            let (key, after) = rest.strip_prefix(DSML_PARAM)?.split_once("\" string=\"")?;
            let (kind, after) = after.split_once("\">")?;
            let (value, after) = after.split_once(DSML_PARAM_END)?;
            rest = after;
            let value = match kind {
                "true" => Value::String(value.to_owned()),
                "false" => serde_json::from_str(value.trim()).ok()?,
                _ => return None,
            };
            args.insert(key.to_owned(), value);
        }
        calls.push(ParsedCall {
            name: call_name(name)?,
            arguments: serde_json::to_string(&Value::Object(args)).ok()?,
        });
    }
    (!calls.is_empty()).then_some(calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(name: &str, arguments: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    const V31_TWO: &str = "Let me look.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"tz\": {\"name\": \"CET\"}}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

    #[test]
    fn v31_several_calls_with_content_before() {
        let parsed = parse(ToolCallFormat::DeepSeekV31, V31_TWO);
        assert_eq!(parsed.content, "Let me look.");
        assert_eq!(
            parsed.calls,
            vec![
                call("get_weather", r#"{"city":"Paris"}"#),
                call("get_time", r#"{"tz":{"name":"CET"}}"#)
            ]
        );
    }

    #[test]
    fn v3_fenced_call_and_content_after() {
        let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": [1, 2]}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\n\"{\\\"b\\\": null}\"\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜> done";
        let parsed = parse(ToolCallFormat::DeepSeekV3, text);
        assert_eq!(parsed.content, " done");
        assert_eq!(
            parsed.calls,
            vec![call("f", r#"{"a":[1,2]}"#), call("g", r#"{"b":null}"#)]
        );
    }

    #[test]
    fn bad_json_comes_back_as_text() {
        let text = "x<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": <｜tool▁call▁end｜><｜tool▁calls▁end｜>y";
        let parsed = parse(ToolCallFormat::DeepSeekV31, text);
        assert_eq!(parsed.content, text);
        assert!(parsed.calls.is_empty());
    }

    #[test]
    fn a_call_of_an_undeclared_function_comes_back_as_text() {
        let known = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let mut parser = ToolCallParser::new(ToolCallFormat::DeepSeekV31)
            .only_functions(known(&["get_weather"]));
        let mut events = parser.push(V31_TWO);
        events.extend(parser.finish());
        // get_time is not declared: the whole section is text, as with bad JSON.
        assert_eq!(collect(events).content, V31_TWO);
        let mut parser = ToolCallParser::new(ToolCallFormat::DeepSeekV31)
            .only_functions(known(&["get_weather", "get_time"]));
        let mut events = parser.push(V31_TWO);
        events.extend(parser.finish());
        assert_eq!(collect(events), parse(ToolCallFormat::DeepSeekV31, V31_TWO));
    }

    #[test]
    fn unterminated_section_at_finish_is_text() {
        let text =
            "a<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{}<｜tool▁call▁end｜>";
        let mut parser = ToolCallParser::new(ToolCallFormat::DeepSeekV31);
        let events = parser.push(text);
        assert_eq!(events, vec![ToolEvent::Content("a".into())]);
        assert_eq!(
            parser.finish(),
            vec![ToolEvent::Content(text["a".len()..].into())]
        );
    }

    #[test]
    fn a_partial_marker_is_held_then_released() {
        let mut parser = ToolCallParser::new(ToolCallFormat::KimiK2);
        assert_eq!(
            parser.push("hi <|tool_calls"),
            vec![ToolEvent::Content("hi ".into())]
        );
        assert_eq!(
            parser.push("!"),
            vec![ToolEvent::Content("<|tool_calls!".into())]
        );
        assert_eq!(parser.push("<|tool"), vec![]);
        assert_eq!(parser.finish(), vec![ToolEvent::Content("<|tool".into())]);
    }

    #[test]
    fn kimi_calls_and_index_suffix() {
        let text = "ok<|tool_calls_section_begin|><|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{\"q\": \"é\\\"\"}<|tool_call_end|><|tool_call_begin|>functions.a:b:1<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>";
        let parsed = parse(ToolCallFormat::KimiK2, text);
        assert_eq!(parsed.content, "ok");
        assert_eq!(
            parsed.calls,
            vec![call("search", r#"{"q":"é\""}"#), call("a:b", "{}")]
        );
    }

    #[test]
    fn dsml_string_and_json_parameters() {
        let text = "Sure.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"s\" string=\"true\"> a \"b\"\n</｜DSML｜parameter>\n<｜DSML｜parameter name=\"n\" string=\"false\">{\"x\": [1, true]}</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"g\">\n\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
        let parsed = parse(ToolCallFormat::Dsml, text);
        assert_eq!(parsed.content, "Sure.");
        assert_eq!(
            parsed.calls,
            vec![
                call("f", r#"{"s":" a \"b\"\n","n":{"x":[1,true]}}"#),
                call("g", "{}")
            ]
        );
        // V4's block name, without the blank line.
        let v4 = "<｜DSML｜tool_calls><｜DSML｜invoke name=\"h\"><｜DSML｜parameter name=\"k\" string=\"false\">3</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜tool_calls>";
        assert_eq!(
            parse(ToolCallFormat::Dsml, v4).calls,
            vec![call("h", r#"{"k":3}"#)]
        );
    }

    #[test]
    fn dsml_bad_value_is_text() {
        let text = "<｜DSML｜tool_calls><｜DSML｜invoke name=\"h\"><｜DSML｜parameter name=\"k\" string=\"false\">nope</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜tool_calls>";
        let parsed = parse(ToolCallFormat::Dsml, text);
        assert_eq!(parsed.content, text);
        assert!(parsed.calls.is_empty());
    }

    #[test]
    fn names_round_trip_and_detection() {
        for format in ToolCallFormat::ALL {
            assert_eq!(format.name().parse::<ToolCallFormat>(), Ok(format));
        }
        assert_eq!("deepseek_v4".parse(), Ok(ToolCallFormat::Dsml));
        assert!("nope".parse::<ToolCallFormat>().is_err());
        assert_eq!(ToolCallFormat::detect("{{ x }}"), None);
    }

    fn samples() -> Vec<(ToolCallFormat, String)> {
        vec![
            (ToolCallFormat::DeepSeekV31, V31_TWO.to_owned()),
            (
                ToolCallFormat::DeepSeekV31,
                "<｜tool▁calls▁begin｜>é<｜tool▁calls▁end｜>ü".to_owned(),
            ),
            (ToolCallFormat::DeepSeekV31, format!("a{V31_TWO}b{V31_TWO}<｜tool▁")),
            (
                ToolCallFormat::Dsml,
                "é\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"s\" string=\"true\">ü</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n\n\n<｜DSML｜function_calls>x".to_owned(),
            ),
            (
                ToolCallFormat::KimiK2,
                "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"a\":\"<|\"}<|tool_call_end|><|tool_calls_section_end|>tail<|tool_calls_section_begin|>broken<|tool_calls_section_end|>".to_owned(),
            ),
        ]
    }

    fn streamed(format: ToolCallFormat, pieces: &[&str]) -> Parsed {
        let mut parser = ToolCallParser::new(format);
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(parser.push(piece));
        }
        events.extend(parser.finish());
        collect(events)
    }

    #[test]
    fn every_split_in_two_parses_as_the_whole() {
        for (format, text) in samples() {
            let whole = parse(format, &text);
            for (at, _) in text.char_indices() {
                assert_eq!(
                    streamed(format, &[&text[..at], &text[at..]]),
                    whole,
                    "{format} split at {at}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn random_pieces_parse_as_the_whole(sample in 0usize..5, cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let (format, text) = samples().swap_remove(sample);
            let mut bounds: Vec<usize> = cuts
                .into_iter()
                .map(|c| c % (text.len() + 1))
                .filter(|c| text.is_char_boundary(*c))
                .collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            bounds.dedup();
            let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(streamed(format, &pieces), parse(format, &text));
        }
    }
}
