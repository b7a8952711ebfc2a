//! The grammar of a family's tool-call markup, for `tool_choice:
//! "required"` and a named function: the section of calls exactly as the
//! family's template writes an assistant's `tool_calls` (and as
//! [`crate::output::tool_calls`] parses it back), each call naming one of
//! the allowed functions, its arguments JSON matching that function's
//! `parameters` schema.

use serde_json::{json, Map, Value};

use super::{with_json_options, Grammars};
use crate::output::ToolCallFormat;

/// A function the model may call: its name and its parameters' JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    /// A JSON schema (an object); `{"type": "object"}` when the tool gave none.
    pub parameters: Value,
}

/// A section of tool calls in `format`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallGrammar {
    pub format: ToolCallFormat,
    /// The functions a call may name (already narrowed to one for a named
    /// `tool_choice`).
    pub functions: Vec<FunctionSpec>,
    /// Several calls in the section (`parallel_tool_calls`), else exactly one.
    pub parallel: bool,
}

impl ToolCallGrammar {
    /// The grammar in llguidance's Lark.
    pub(super) fn lark(&self, g: &Grammars) -> Result<String, String> {
        if self.functions.is_empty() {
            return Err("there are no functions to call".into());
        }
        let mut rules = Vec::new();
        let mut calls = Vec::new();
        for (i, f) in self.functions.iter().enumerate() {
            if !f.parameters.is_object() {
                return Err(format!(
                    "the parameters of function {:?} are not a JSON schema object",
                    f.name
                ));
            }
            let rule = format!("call_{i}");
            rules.push(format!("{rule}: {}", self.call(g, f)));
            calls.push(rule);
        }
        let call = calls.join(" | ");
        let (begin, end, between) = self.section(g);
        let more = if self.parallel {
            format!(" ({between} call)*")
        } else {
            String::new()
        };
        let mut lark = format!("start: {begin} calls {end}\ncalls: call{more}\ncall: {call}\n");
        for r in rules {
            lark.push_str(&r);
            lark.push('\n');
        }
        Ok(lark)
    }

    /// The section's begin and end markers, and what goes between two
    /// calls (as the templates write them).
    fn section(&self, g: &Grammars) -> (String, String, String) {
        let (begin, end, between) = match self.format {
            ToolCallFormat::DeepSeekV3 => ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "\n"),
            ToolCallFormat::DeepSeekV31 => ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", ""),
            ToolCallFormat::Dsml => (
                "\n\n<｜DSML｜function_calls>\n",
                "</｜DSML｜function_calls>",
                "",
            ),
            ToolCallFormat::KimiK2 => (
                "<|tool_calls_section_begin|>",
                "<|tool_calls_section_end|>",
                "",
            ),
        };
        let between = if between.is_empty() {
            String::new()
        } else {
            g.literal(between)
        };
        (g.literal(begin), g.literal(end), between)
    }

    /// One call of function `f`.
    fn call(&self, g: &Grammars, f: &FunctionSpec) -> String {
        let args = || json_rule(&f.parameters);
        match self.format {
            ToolCallFormat::DeepSeekV31 => format!(
                "{} {} {}",
                g.literal(&format!("<｜tool▁call▁begin｜>{}<｜tool▁sep｜>", f.name)),
                args(),
                g.literal("<｜tool▁call▁end｜>"),
            ),
            ToolCallFormat::DeepSeekV3 => format!(
                "{} {} {}",
                g.literal(&format!(
                    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{}\n```json\n",
                    f.name
                )),
                args(),
                g.literal("\n```<｜tool▁call▁end｜>"),
            ),
            ToolCallFormat::KimiK2 => format!(
                "{} /[0-9]{{1,3}}/ {} {} {}",
                g.literal(&format!("<|tool_call_begin|>functions.{}:", f.name)),
                g.literal("<|tool_call_argument_begin|>"),
                args(),
                g.literal("<|tool_call_end|>"),
            ),
            ToolCallFormat::Dsml => dsml_call(g, f),
        }
    }
}

/// `%json` of a schema with the engine's JSON options.
fn json_rule(schema: &Value) -> String {
    format!("%json {}", with_json_options(schema.clone()))
}

/// A DSML `invoke`: each parameter as its own element, strings bare
/// (`string="true"`: any text without `<`, within `minLength`/`maxLength`,
/// or one of an `enum`), other values as JSON (`string="false"`) matching
/// their schema. Parameters come in the schema's order; those not required
/// may be left out.
fn dsml_call(g: &Grammars, f: &FunctionSpec) -> String {
    let mut parts = vec![g.literal(&format!("<｜DSML｜invoke name=\"{}\">\n", f.name))];
    let empty = Map::new();
    let properties = f
        .parameters
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required: Vec<&str> = f
        .parameters
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // `$ref`s in a parameter's schema point into the whole schema's `$defs`.
    let defs: Map<String, Value> = ["$defs", "definitions"]
        .iter()
        .filter_map(|k| Some((k.to_string(), f.parameters.get(*k)?.clone())))
        .collect();
    for (key, schema) in properties {
        let open = |string: bool| {
            g.literal(&format!(
                "<｜DSML｜parameter name=\"{key}\" string=\"{string}\">"
            ))
        };
        let close = g.literal("</｜DSML｜parameter>\n");
        let value = if schema.get("type").and_then(Value::as_str) == Some("string") {
            let body = match schema.get("enum").and_then(Value::as_array) {
                Some(values) => {
                    let options: Vec<String> = values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|v| g.literal(v))
                        .collect();
                    format!("({})", options.join(" | "))
                }
                None => {
                    // Bare text up to the closing tag, within the schema's length.
                    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                    match schema.get("maxLength").and_then(Value::as_u64) {
                        Some(max) => format!("/[^<]{{{min},{max}}}/"),
                        None => format!("/[^<]{{{min},}}/"),
                    }
                }
            };
            format!("{} {body} {close}", open(true))
        } else {
            let mut schema = schema.clone();
            if let Value::Object(map) = &mut schema {
                for (k, v) in &defs {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            } else {
                schema = json!({});
            }
            format!("{} {} {close}", open(false), json_rule(&schema))
        };
        let optional = if required.contains(&key.as_str()) {
            ""
        } else {
            "?"
        };
        parts.push(format!("({value}){optional}"));
    }
    parts.push(g.literal("</｜DSML｜invoke>\n"));
    parts.join(" ")
}
