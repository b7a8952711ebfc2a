//! Structured output: the request fields that hold a generation to a
//! grammar, turned into the engine's [`GrammarSpec`] and compiled (off the
//! async runtime: a large schema takes milliseconds).
//!
//! - OpenAI's `response_format`: `text`, `json_object`, or `json_schema`
//!   (`{name, schema, strict}`);
//! - vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar` in
//!   llguidance's Lark, `json_object`), and its older top-level
//!   `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`;
//! - a tool call the request requires (`tool_choice: "required"` or a
//!   named function), built by the chat route.
//!
//! At most one of them applies; a request that sets two is refused, as is a
//! grammar llguidance cannot compile, with the field at fault named.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use ferroseek_engine::{Grammar, GrammarSpec, Grammars};

use crate::error::ApiError;
use crate::openai::common::SamplingRequest;
use crate::state::Ready;
use crate::tokens::off_runtime;

/// OpenAI's `response_format`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ResponseFormat {
    /// `text` (the default), `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`. `name`, `description` and `strict` are
/// accepted as OpenAI has them; the schema is what the output matches.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    /// The JSON schema the output must match; left out, any JSON value.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Accepted; the output always matches the schema.
    pub strict: Option<bool>,
}

/// vLLM's `structured_outputs`: exactly one of its constraints.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StructuredOutputs {
    /// A JSON schema (an object, or its text).
    #[schema(value_type = Option<Object>)]
    pub json: Option<Value>,
    /// A regular expression the whole output matches (Rust `regex` syntax).
    pub regex: Option<String>,
    /// The output is one of these strings.
    pub choice: Option<Vec<String>>,
    /// A grammar in llguidance's Lark dialect.
    pub grammar: Option<String>,
    /// Any JSON object.
    pub json_object: Option<bool>,
}

/// The grammar one of a request's fields asks for, and the field's name.
pub type Asked = (GrammarSpec, String);

/// What `response_format` and `structured_outputs` (or the `guided_*`
/// fields) of a request ask for; at most one may.
pub fn asked(req: &SamplingRequest) -> Result<Option<Asked>, ApiError> {
    let mut found: Vec<Asked> = Vec::new();
    if let Some(rf) = &req.response_format {
        found.extend(response_format(rf)?);
    }
    if let Some(so) = &req.structured_outputs {
        found.extend(structured_outputs(so, "structured_outputs.")?);
    }
    let guided = StructuredOutputs {
        json: req.guided_json.clone(),
        regex: req.guided_regex.clone(),
        choice: req.guided_choice.clone(),
        grammar: req.guided_grammar.clone(),
        json_object: None,
    };
    found.extend(structured_outputs(&guided, "guided_")?);
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, p)| p.as_str()).collect();
        return Err(ApiError::invalid(
            names[1],
            format!(
                "only one output constraint may be given; got `{}`",
                names.join("`, `")
            ),
        ));
    }
    Ok(found.pop())
}

fn response_format(rf: &ResponseFormat) -> Result<Option<Asked>, ApiError> {
    let spec = match rf.kind.as_str() {
        "text" => return Ok(None),
        "json_object" => GrammarSpec::JsonObject,
        "json_schema" => {
            let Some(format) = &rf.json_schema else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "`response_format.json_schema` is required with `type: \"json_schema\"`",
                ));
            };
            match &format.schema {
                None => GrammarSpec::JsonSchema(Value::Object(Default::default())),
                Some(schema @ Value::Object(_)) => GrammarSpec::JsonSchema(schema.clone()),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "`response_format.json_schema.schema` must be a JSON schema object",
                    ))
                }
            }
        }
        other => {
            return Err(ApiError::invalid(
                "response_format.type",
                format!(
                    "`response_format.type` must be `text`, `json_object` or `json_schema`, \
                     got {other:?}"
                ),
            ))
        }
    };
    let param = match spec {
        GrammarSpec::JsonSchema(_) => "response_format.json_schema.schema",
        _ => "response_format",
    };
    Ok(Some((spec, param.into())))
}

/// The constraints set in `so`, each with its field's name (`prefix` +
/// the key).
fn structured_outputs(so: &StructuredOutputs, prefix: &str) -> Result<Vec<Asked>, ApiError> {
    let mut found = Vec::new();
    if let Some(json) = &so.json {
        let schema = match json {
            Value::String(text) => serde_json::from_str(text).map_err(|e| {
                ApiError::invalid(
                    format!("{prefix}json"),
                    format!("`{prefix}json` is not valid JSON: {e}"),
                )
            })?,
            value => value.clone(),
        };
        if !schema.is_object() {
            return Err(ApiError::invalid(
                format!("{prefix}json"),
                format!("`{prefix}json` must be a JSON schema object"),
            ));
        }
        found.push((GrammarSpec::JsonSchema(schema), format!("{prefix}json")));
    }
    if let Some(rx) = &so.regex {
        found.push((GrammarSpec::Regex(rx.clone()), format!("{prefix}regex")));
    }
    if let Some(choice) = &so.choice {
        found.push((
            GrammarSpec::Choice(choice.clone()),
            format!("{prefix}choice"),
        ));
    }
    if let Some(grammar) = &so.grammar {
        found.push((
            GrammarSpec::Lark(grammar.clone()),
            format!("{prefix}grammar"),
        ));
    }
    if so.json_object == Some(true) {
        found.push((GrammarSpec::JsonObject, format!("{prefix}json_object")));
    }
    Ok(found)
}

/// Compiles what was asked, off the async runtime; a grammar that does not
/// compile is a 400 on its field. `start_after`: the token the grammar
/// waits for (`</think>` when the prompt opened reasoning).
pub async fn compile(
    ready: &Ready,
    asked: Option<Asked>,
    start_after: Option<u32>,
) -> Result<Option<Grammar>, ApiError> {
    let Some((spec, param)) = asked else {
        return Ok(None);
    };
    let grammars = ready.grammars.clone();
    off_runtime(move || {
        grammars.compile(&spec, start_after).map(Some).map_err(|e| {
            let param = at_fault(&grammars, &spec, param);
            ApiError::invalid(param.clone(), format!("`{param}`: {e}"))
        })
    })
    .await
}

/// The field to blame for a grammar that does not compile: for the calls
/// `tool_choice: "required"` asks for (`param` is `tools`, every function
/// in request order), the first function whose `parameters` schema does
/// not compile on its own.
fn at_fault(grammars: &Grammars, spec: &GrammarSpec, param: String) -> String {
    let GrammarSpec::ToolCalls(calls) = spec else {
        return param;
    };
    if param != "tools" {
        return param;
    }
    calls
        .functions
        .iter()
        .position(|f| {
            let alone = GrammarSpec::JsonSchema(f.parameters.clone());
            grammars.compile(&alone, None).is_err()
        })
        .map(|i| format!("tools[{i}].function.parameters"))
        .unwrap_or(param)
}
