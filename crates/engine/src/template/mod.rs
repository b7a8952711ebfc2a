//! Chat templates: turn a conversation into the prompt text a model was
//! trained on, by rendering the Jinja template from the model's
//! `tokenizer_config.json` the way Hugging Face transformers'
//! `apply_chat_template` does (`utils/chat_template_utils.py`):
//!
//! * the environment: `trim_blocks` and `lstrip_blocks` on, a single
//!   trailing newline dropped, no auto-escaping, `{% break %}`/`{% continue %}`,
//!   Python's str/dict methods (minijinja-contrib's pycompat), `tojson` as
//!   `json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)`,
//!   `raise_exception(msg)`, `strftime_now(fmt)`, and printing as Python's
//!   `str()` (`True`, `None`, `['a']`);
//! * the variables: the special tokens (`bos_token`, `eos_token`, ...),
//!   then the extra variables of the request (`chat_template_kwargs`), then
//!   `messages`, `tools` (`None` when absent), `documents` (`None`) and
//!   `add_generation_prompt`;
//! * the messages as HF passes them: `content` always there (`None` when a
//!   message has none, as an OpenAI client's `content: null` reaches HF),
//!   other keys whose value is `None` left out, content either a string or
//!   the list of parts as given, tool-call
//!   arguments as the JSON string the client sent, and a message's
//!   reasoning also under `thinking` (first key) as HF aliases it.
//!
//! Beyond HF, the `from_json` filter exists (DeepSeek-V3.2/V4 templates call
//! it on string tool-call arguments; under HF they fail).

mod mutable;
mod python;
mod strftime;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Rest, Value};
use minijinja::{AutoEscape, Environment};

use crate::error::{Error, Result};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The name templates compare against (`message['role'] == 'user'`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A message's content: plain text, or a list of parts that templates see
/// as `[{"type": "text", "text": ...}, ...]`.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part content.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text(String),
}

/// A tool call an assistant made, in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the JSON text the model wrote; templates get this
    /// string, as HF passes an OpenAI-shaped call.
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    /// `None` reaches the template as `content: none`, as HF passes a
    /// client's `content: null` (R1's template tests `is not none`; a key
    /// left out would be undefined there and fail).
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// `Some(vec![])` reaches the template as an empty list, `None` not at all.
    pub tool_calls: Option<Vec<ToolCall>>,
    pub tool_call_id: Option<String>,
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    /// A message with text content and nothing else.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            reasoning_content: None,
        }
    }

    /// The message as the template sees it (keys in HF's order).
    fn to_value(&self) -> Value {
        let mut pairs: Vec<(&str, Value)> = Vec::with_capacity(8);
        if let Some(reasoning) = &self.reasoning_content {
            pairs.push(("thinking", Value::from(reasoning.as_str())));
        }
        pairs.push(("role", Value::from(self.role.as_str())));
        match &self.content {
            Some(MessageContent::Text(text)) => pairs.push(("content", Value::from(text.as_str()))),
            Some(MessageContent::Parts(parts)) => {
                let parts: Vec<Value> = parts
                    .iter()
                    .map(|ContentPart::Text(text)| {
                        Value::from_pairs([
                            ("type", Value::from("text")),
                            ("text", Value::from(text.as_str())),
                        ])
                    })
                    .collect();
                pairs.push(("content", Value::from(parts)));
            }
            None => pairs.push(("content", Value::from(()))),
        }
        if let Some(name) = &self.name {
            pairs.push(("name", Value::from(name.as_str())));
        }
        if let Some(calls) = &self.tool_calls {
            pairs.push((
                "tool_calls",
                Value::from(calls.iter().map(tool_call_value).collect::<Vec<_>>()),
            ));
        }
        if let Some(id) = &self.tool_call_id {
            pairs.push(("tool_call_id", Value::from(id.as_str())));
        }
        if let Some(reasoning) = &self.reasoning_content {
            pairs.push(("reasoning_content", Value::from(reasoning.as_str())));
        }
        Value::from_pairs(pairs)
    }
}

fn tool_call_value(call: &ToolCall) -> Value {
    let function = Value::from_pairs([
        ("name", Value::from(call.name.as_str())),
        ("arguments", Value::from(call.arguments.as_str())),
    ]);
    Value::from_pairs([
        ("id", Value::from(call.id.as_str())),
        ("type", Value::from("function")),
        ("function", function),
    ])
}

/// The special tokens a template can print, as strings (HF's
/// `special_tokens_map`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

/// What to render: the conversation and the request's template options.
#[derive(Debug, Clone, Copy)]
pub struct ChatInput<'a> {
    pub messages: &'a [ChatMessage],
    /// Tool definitions as the client sent them (`{"type": "function",
    /// "function": {...}}`); `None` when the request has no `tools`.
    pub tools: Option<&'a [serde_json::Value]>,
    pub add_generation_prompt: bool,
    /// Extra template variables (`chat_template_kwargs`: `thinking`,
    /// `enable_thinking`, `reasoning_effort`, ...). They override the special
    /// tokens, but not `messages`, `tools`, `documents` or
    /// `add_generation_prompt`.
    pub kwargs: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// Which of several named templates to use; by default `tool_use` when
    /// there are tools and the model has one, else `default`.
    pub template_name: Option<&'a str>,
}

impl<'a> ChatInput<'a> {
    /// Render `messages` with no tools, no extra variables and no generation prompt.
    pub fn new(messages: &'a [ChatMessage]) -> Self {
        Self {
            messages,
            tools: None,
            add_generation_prompt: false,
            kwargs: None,
            template_name: None,
        }
    }
}

/// A model's chat template as `tokenizer_config.json` gives it: one
/// template, or several by name (`[{"name": "default", "template": ...}]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    Single(String),
    Named(Vec<(String, String)>),
}

/// Name under which a single (unnamed) template is registered.
const SINGLE: &str = "chat_template";

/// A compiled chat template, ready to render many requests (it is `Send +
/// Sync`; share it behind an `Arc`).
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Template names in the order the model listed them; empty for a single template.
    names: Vec<String>,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("names", &self.names)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`; fails with [`Error::TemplateSyntax`] on a template
    /// that does not parse.
    pub fn new(source: TemplateSource, special: SpecialTokens) -> Result<Self> {
        let mut env = hf_environment();
        let mut names = Vec::new();
        let templates = match source {
            TemplateSource::Single(text) => vec![(SINGLE.to_owned(), text)],
            TemplateSource::Named(list) => {
                if list.is_empty() {
                    return Err(Error::NoChatTemplate(
                        "the list of named chat templates is empty".into(),
                    ));
                }
                names = list.iter().map(|(name, _)| name.clone()).collect();
                list
            }
        };
        for (name, text) in templates {
            env.add_template_owned(name.clone(), text)
                .map_err(|e| Error::TemplateSyntax {
                    name: name.clone(),
                    message: error_message(&e),
                })?;
        }
        Ok(Self {
            env,
            names,
            special,
        })
    }

    /// Compile a single template.
    pub fn from_text(source: impl Into<String>, special: SpecialTokens) -> Result<Self> {
        Self::new(TemplateSource::Single(source.into()), special)
    }

    /// Names of the templates when the model ships several, else empty.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text of every template the model ships, joined: what tells which
    /// syntax it renders tool calls in.
    pub fn source(&self) -> String {
        let single = [SINGLE.to_owned()];
        let names = if self.names.is_empty() {
            &single[..]
        } else {
            &self.names[..]
        };
        names
            .iter()
            .filter_map(|name| self.env.get_template(name).ok())
            .map(|t| t.source().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The special tokens the template sees.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// HF's `get_chat_template`: an explicit name, else `tool_use` with
    /// tools, else `default`.
    fn select(&self, input: &ChatInput<'_>) -> Result<&str> {
        if self.names.is_empty() {
            return match input.template_name {
                None => Ok(SINGLE),
                Some(name) => Err(Error::NoChatTemplate(format!(
                    "the model has a single chat template, not one named `{name}`"
                ))),
            };
        }
        let find = |n: &str| self.names.iter().find(|x| *x == n).map(String::as_str);
        let found = match input.template_name {
            Some(name) => find(name),
            None if input.tools.is_some() => find("tool_use").or_else(|| find("default")),
            None => find("default"),
        };
        found.ok_or_else(|| {
            Error::NoChatTemplate(match input.template_name {
                Some(name) => format!(
                    "no chat template named `{name}`; the model has {:?}",
                    self.names
                ),
                None => format!(
                    "the model has several chat templates and none named `default`: {:?}",
                    self.names
                ),
            })
        })
    }

    /// Render the prompt text. The text already holds the BOS token when the
    /// template prints it, so encode it without adding special tokens.
    pub fn render(&self, input: &ChatInput<'_>) -> Result<String> {
        let name = self.select(input)?;
        let template = self
            .env
            .get_template(name)
            .map_err(|e| Error::NoChatTemplate(error_message(&e)))?;
        template
            .render(self.context(input))
            .map_err(|e| render_error(name, &e))
    }

    fn context(&self, input: &ChatInput<'_>) -> Value {
        const EXPLICIT: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];
        let mut vars: Vec<(String, Value)> = Vec::new();
        let special = [
            ("bos_token", &self.special.bos_token),
            ("eos_token", &self.special.eos_token),
            ("unk_token", &self.special.unk_token),
            ("pad_token", &self.special.pad_token),
        ];
        for (key, token) in special {
            if let Some(token) = token {
                vars.push((key.to_owned(), Value::from(token.as_str())));
            }
        }
        for (key, value) in input.kwargs.into_iter().flatten() {
            if EXPLICIT.contains(&key.as_str()) {
                continue;
            }
            let value = python::json_to_value(value);
            match vars.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value,
                None => vars.push((key.clone(), value)),
            }
        }
        let messages: Vec<Value> = input.messages.iter().map(ChatMessage::to_value).collect();
        let tools = input.tools.map_or(Value::from(()), |tools| {
            Value::from(tools.iter().map(python::json_to_value).collect::<Vec<_>>())
        });
        vars.push(("messages".into(), Value::from(messages)));
        vars.push(("tools".into(), tools));
        vars.push(("documents".into(), Value::from(())));
        vars.push((
            "add_generation_prompt".into(),
            Value::from(input.add_generation_prompt),
        ));
        Value::from_pairs(vars)
    }
}

/// The environment HF's `_compile_jinja_template` builds, in minijinja.
fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build();
    match syntax {
        Ok(syntax) => env.set_syntax(syntax),
        Err(e) => tracing::error!("cannot configure the chat template syntax: {e}"),
    }
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        out.write_str(&python::py_str(value))
            .map_err(minijinja::Error::from)
    });
    env.add_function("namespace", mutable::namespace);
    env.add_filter("tojson", python::tojson);
    env.add_filter("string", |v: Value| python::py_str(&v));
    env.add_filter("from_json", |text: &str| python::from_json(text));
    env.add_function(
        "raise_exception",
        |msg: Rest<Value>| -> Result<Value, minijinja::Error> {
            let msg = msg.first().map(python::py_str).unwrap_or_default();
            Err(
                minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, "raise_exception")
                    .with_source(Raised(msg)),
            )
        },
    );
    env.add_function("strftime_now", |fmt: &str| {
        strftime::DateTime::now().format(fmt)
    });
    env
}

/// The message of a template's `raise_exception`, carried through minijinja.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn render_error(name: &str, err: &minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(Raised(msg)) = e.downcast_ref::<Raised>() {
            return Error::TemplateRaised(msg.clone());
        }
        source = e.source();
    }
    Error::TemplateRender {
        name: name.to_owned(),
        message: error_message(err),
    }
}

/// minijinja's message with its causes, on one line.
fn error_message(err: &minijinja::Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        source = e.source();
    }
    msg
}
