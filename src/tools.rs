//! A chat request's `tools`, `tool_choice` and `parallel_tool_calls`,
//! checked at the edge into [`ValidTools`], and what they ask of the
//! output: the tool-call parser is on when the request has tools, its
//! `tool_choice` is not `none`, and the model has a tool-call format.
//!
//! `required` and a named function hold the output to a grammar
//! ([`ValidTools::grammar`]): a section of calls in the model's format,
//! naming the allowed functions, with arguments matching each function's
//! `parameters` schema. `none` turns the parser off: whatever the model
//! writes is content, never a call.

use std::collections::HashSet;

use ferroseek_engine::{
    FunctionSpec, GrammarSpec, ToolCallFormat, ToolCallGrammar, ToolCallOptions,
};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model must not call: its text is content, markup included.
    None,
    /// The model chooses (the default).
    Auto,
    /// The model must call one or more tools (held to a grammar).
    Required,
    /// The model must call this function (held to a grammar).
    Function(String),
}

/// One declared function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema, as given (an object).
    pub parameters: Option<Map<String, Value>>,
    pub strict: Option<bool>,
}

/// A request's tool fields, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTools {
    pub tools: Vec<FunctionTool>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): false returns the first call only.
    pub parallel: bool,
}

impl ValidTools {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls`.
    pub fn new(
        tools: Option<&[Value]>,
        tool_choice: Option<&Value>,
        parallel_tool_calls: Option<bool>,
    ) -> Result<Self, ApiError> {
        let tools = tools
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, tool)| function_tool(i, tool))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        for (i, tool) in tools.iter().enumerate() {
            if !seen.insert(tool.name.as_str()) {
                let param = format!("tools[{i}].function.name");
                return Err(ApiError::invalid(
                    &param,
                    format!("`{param}`: `{}` is declared twice", tool.name),
                ));
            }
        }
        let choice = match tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(value) => tool_choice_of(value, &tools)?,
        };
        Ok(ValidTools {
            tools,
            choice,
            parallel: parallel_tool_calls.unwrap_or(true),
        })
    }

    /// What the output's tool-call stage needs, when it is on.
    pub fn parser(&self, format: Option<ToolCallFormat>) -> Option<ToolCallOptions> {
        if self.tools.is_empty() || self.choice == ToolChoice::None {
            return None;
        }
        Some(ToolCallOptions {
            format: format?,
            functions: self.tools.iter().map(|t| t.name.clone()).collect(),
            parallel: self.parallel,
        })
    }
}

impl ValidTools {
    /// The grammar a `required` or named `tool_choice` holds the output to,
    /// with the field it came from; `None` for `auto` and `none`. A model
    /// without a tool-call format cannot be made to call: a 400.
    pub fn grammar(
        &self,
        format: Option<ToolCallFormat>,
    ) -> Result<Option<(GrammarSpec, String)>, ApiError> {
        // The field a schema that does not compile is blamed on.
        let (functions, param): (Vec<&FunctionTool>, String) = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return Ok(None),
            ToolChoice::Required => (self.tools.iter().collect(), "tools".into()),
            ToolChoice::Function(name) => {
                let i = self.tools.iter().position(|t| &t.name == name);
                let param = match i {
                    Some(i) => format!("tools[{i}].function.parameters"),
                    None => "tool_choice".into(),
                };
                (
                    self.tools.iter().filter(|t| &t.name == name).collect(),
                    param,
                )
            }
        };
        let Some(format) = format else {
            return Err(invalid(
                "tool_choice",
                "needs a model with a tool-call format; this one has none \
                 (see `--tool-call-parser`)",
            ));
        };
        let functions = functions
            .into_iter()
            .map(|t| FunctionSpec {
                name: t.name.clone(),
                parameters: t
                    .parameters
                    .clone()
                    .map(Value::Object)
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            })
            .collect();
        let spec = GrammarSpec::ToolCalls(ToolCallGrammar {
            format,
            functions,
            parallel: self.parallel,
        });
        Ok(Some((spec, param)))
    }
}

fn invalid(param: &str, what: &str) -> ApiError {
    ApiError::invalid(param, format!("`{param}` {what}"))
}

/// `tools[i]`: `{"type": "function", "function": {"name", "description"?,
/// "parameters"?, "strict"?}}`.
fn function_tool(i: usize, tool: &Value) -> Result<FunctionTool, ApiError> {
    let at = format!("tools[{i}]");
    let tool = tool
        .as_object()
        .ok_or_else(|| invalid(&at, "must be an object"))?;
    match tool.get("type") {
        Some(Value::String(kind)) if kind == "function" => {}
        _ => return Err(invalid(&format!("{at}.type"), "must be `function`")),
    }
    let at = format!("{at}.function");
    let function = tool
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(&at, "must be an object with the function's `name`"))?;
    let name = match function.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
        _ => return Err(invalid(&format!("{at}.name"), "must be a non-empty string")),
    };
    let description = match function.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(invalid(&format!("{at}.description"), "must be a string")),
    };
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => None,
        Some(Value::Object(schema)) => Some(schema.clone()),
        Some(_) => {
            return Err(invalid(
                &format!("{at}.parameters"),
                "must be a JSON schema object",
            ))
        }
    };
    let strict = match function.get("strict") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(invalid(&format!("{at}.strict"), "must be a boolean")),
    };
    Ok(FunctionTool {
        name,
        description,
        parameters,
        strict,
    })
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function",
/// "function": {"name": N}}` with `N` among the tools.
fn tool_choice_of(value: &Value, tools: &[FunctionTool]) -> Result<ToolChoice, ApiError> {
    const PARAM: &str = "tool_choice";
    let expected = "must be `none`, `auto`, `required` or \
                    `{\"type\": \"function\", \"function\": {\"name\": ...}}`";
    let choice = match value {
        Value::String(s) => match s.as_str() {
            "none" => return Ok(ToolChoice::None),
            "auto" => return Ok(ToolChoice::Auto),
            "required" => ToolChoice::Required,
            _ => return Err(invalid(PARAM, expected)),
        },
        Value::Object(o) => {
            let name = match (o.get("type"), o.get("function")) {
                (Some(Value::String(t)), Some(Value::Object(f))) if t == "function" => {
                    f.get("name").and_then(Value::as_str)
                }
                _ => None,
            };
            let Some(name) = name else {
                return Err(invalid(PARAM, expected));
            };
            if !tools.is_empty() && !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    PARAM,
                    format!("`tool_choice` names the function `{name}`, which is not in `tools`"),
                ));
            }
            ToolChoice::Function(name.to_owned())
        }
        _ => return Err(invalid(PARAM, expected)),
    };
    if tools.is_empty() {
        return Err(invalid(PARAM, "needs `tools`: there is no tool to call"));
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object"}}}),
            json!({"type": "function", "function": {"name": "get_time", "description": "now",
                "strict": true}}),
        ]
    }

    fn param(tools: Option<&[Value]>, choice: Value) -> Option<String> {
        ValidTools::new(tools, Some(&choice), None)
            .unwrap_err()
            .detail
            .param
    }

    #[test]
    fn choices_are_parsed() {
        let t = tools();
        let valid = |c: Value| ValidTools::new(Some(&t), Some(&c), None).unwrap().choice;
        assert_eq!(valid(json!("none")), ToolChoice::None);
        assert_eq!(valid(json!("auto")), ToolChoice::Auto);
        assert_eq!(valid(json!("required")), ToolChoice::Required);
        assert_eq!(
            valid(json!({"type": "function", "function": {"name": "get_time"}})),
            ToolChoice::Function("get_time".into())
        );
        let v = ValidTools::new(Some(&t), None, None).unwrap();
        assert_eq!((v.choice, v.parallel), (ToolChoice::Auto, true));
        assert_eq!(
            v.tools[0].parameters,
            Some(Map::from_iter([("type".into(), json!("object"))]))
        );
        // `none` and `auto` need no tools.
        assert_eq!(
            ValidTools::new(None, Some(&json!("none")), None)
                .unwrap()
                .choice,
            ToolChoice::None
        );
    }

    #[test]
    fn bad_choices_name_tool_choice() {
        let t = tools();
        for choice in [
            json!("sometimes"),
            json!(3),
            json!({"type": "function"}),
            json!({"type": "function", "function": {"name": "nope"}}),
        ] {
            assert_eq!(param(Some(&t), choice).as_deref(), Some("tool_choice"));
        }
        assert_eq!(
            param(None, json!("required")).as_deref(),
            Some("tool_choice")
        );
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(param(Some(&[]), named).as_deref(), Some("tool_choice"));
    }

    #[test]
    fn bad_tools_name_their_field() {
        let check = |tool: Value, want: &str| {
            let list = vec![tools()[0].clone(), tool];
            let e = ValidTools::new(Some(&list), None, None).unwrap_err();
            assert_eq!(
                e.detail.param.as_deref(),
                Some(want),
                "{}",
                e.detail.message
            );
        };
        check(json!("f"), "tools[1]");
        check(
            json!({"type": "code", "function": {"name": "f"}}),
            "tools[1].type",
        );
        check(json!({"type": "function"}), "tools[1].function");
        check(
            json!({"type": "function", "function": {"name": ""}}),
            "tools[1].function.name",
        );
        check(
            json!({"type": "function", "function": {"name": "f", "parameters": "{}"}}),
            "tools[1].function.parameters",
        );
        check(
            json!({"type": "function", "function": {"name": "f", "description": 1}}),
            "tools[1].function.description",
        );
        check(
            json!({"type": "function", "function": {"name": "f", "strict": "yes"}}),
            "tools[1].function.strict",
        );
        check(
            json!({"type": "function", "function": {"name": "get_weather"}}),
            "tools[1].function.name",
        );
    }

    #[test]
    fn the_parser_is_on_only_with_tools_a_choice_and_a_format() {
        let t = tools();
        let f = Some(ToolCallFormat::DeepSeekV31);
        let on = ValidTools::new(Some(&t), None, Some(false)).unwrap();
        let options = on.parser(f).unwrap();
        assert!(!options.parallel && options.functions.contains("get_time"));
        assert!(on.parser(None).is_none());
        let none = ValidTools::new(Some(&t), Some(&json!("none")), None).unwrap();
        assert!(none.parser(f).is_none());
        assert!(ValidTools::new(Some(&[]), None, None)
            .unwrap()
            .parser(f)
            .is_none());
    }
}
