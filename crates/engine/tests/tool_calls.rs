//! The tool-call parsers are the exact inverse of the real chat templates:
//! an assistant message with tool calls is rendered by each family's
//! template, its turn is cut out of the prompt, and parsing it gives back
//! the calls' names, arguments (as JSON values) and content.
//!
//! The templates are read from `../shared/chat_templates` next to the
//! repository, or from `$FERROSEEK_CHAT_TEMPLATES`, as in
//! `tests/chat_templates.rs`; where that folder is missing the test is
//! skipped with a notice, unless `FERROSEEK_REQUIRE_CHAT_TEMPLATES=1`.

mod common;

use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context, Result};
use ferroseek_engine::output::tool_calls::{collect, parse, Parsed};
use ferroseek_engine::{
    ChatInput, ChatMessage, ChatTemplate, ChoiceDelta, ChoiceOutput, Role, SpecialTokens, ToolCall,
    ToolCallDelta, ToolCallFormat, ToolCallOptions, ToolCallParser,
};
use serde_json::{json, Map, Value};

fn template_dir() -> PathBuf {
    match std::env::var_os("FERROSEEK_CHAT_TEMPLATES") {
        Some(dir) => PathBuf::from(dir),
        None => common::repo_dir().join("../shared/chat_templates"),
    }
}

/// A template and how its assistant turn is marked.
struct Case {
    file: &'static str,
    format: ToolCallFormat,
    /// What opens the assistant's turn (its first occurrence is taken).
    turn_start: &'static str,
    /// What ends the turn.
    turn_end: &'static str,
    /// The assistant message's content. R1's template renders the content of
    /// a message with tool calls as a turn of its own after the calls, so
    /// there it is empty (`null` content is rendered by
    /// `r1_renders_calls_with_null_content`).
    content: &'static str,
    /// The engine cannot render the template yet (Kimi-K2-Thinking appends
    /// to a list in a namespace, which minijinja's sequences do not allow):
    /// the part of the error expected, so that a fix makes this test fail
    /// until the case is enabled.
    render_error: Option<&'static str>,
}

const DEEPSEEK_START: &str = "<｜Assistant｜>";
const DEEPSEEK_END: &str = "<｜end▁of▁sentence｜>";
const KIMI_START: &str = "<|im_assistant|>assistant<|im_middle|>";
const KIMI_END: &str = "<|im_end|>";

const CONTENT: &str = "Let me check \"that\" for you — ünïcode ✓.";

/// A template whose assistant turn is `<｜Assistant｜>…<｜end▁of▁sentence｜>`.
const fn deepseek(file: &'static str, format: ToolCallFormat) -> Case {
    Case {
        file,
        format,
        turn_start: DEEPSEEK_START,
        turn_end: DEEPSEEK_END,
        content: CONTENT,
        render_error: None,
    }
}

/// A Kimi template: `<|im_assistant|>assistant<|im_middle|>…<|im_end|>`.
const fn kimi(file: &'static str, render_error: Option<&'static str>) -> Case {
    Case {
        file,
        format: ToolCallFormat::KimiK2,
        turn_start: KIMI_START,
        turn_end: KIMI_END,
        content: CONTENT,
        render_error,
    }
}

const CASES: &[Case] = &[
    Case {
        content: "",
        ..deepseek(
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            ToolCallFormat::DeepSeekV3,
        )
    },
    deepseek(
        "deepseek-ai-DeepSeek-V3.1.jinja",
        ToolCallFormat::DeepSeekV31,
    ),
    deepseek("deepseek-ai-DeepSeek-V3.2.jinja", ToolCallFormat::Dsml),
    deepseek("deepseek-ai-DeepSeek-V4.jinja", ToolCallFormat::Dsml),
    deepseek(
        "deepseek-ai-DeepSeek-V4-Flash-0731.jinja",
        ToolCallFormat::Dsml,
    ),
    kimi("moonshotai-Kimi-K2.jinja", None),
    kimi("Kimi-K2-Thinking.jinja", None),
];

/// The reasoning the templates put before the answer of a past turn; the
/// reasoning splitter takes it out before the tool-call parser sees the text.
const THINK_PREFIXES: &[&str] = &["<think></think>", "</think>"];

/// Sets of calls to render: one, then several, with nested arguments,
/// unicode, quotes, and string and non-string values.
fn call_sets() -> Vec<Vec<(&'static str, Value)>> {
    vec![
        vec![("get_weather", json!({"city": "Zürich", "unit": "celsius"}))],
        vec![
            (
                "search",
                json!({
                    "query": "say \"hi\" — 你好 <b>&'x'</b>\\n",
                    "limit": 5,
                    "exact": false,
                    "ratio": 0.25,
                    "filters": {"tags": ["a", "b\"c"], "range": {"from": 1, "to": null}},
                }),
            ),
            ("get_time", json!({"zone": "Europe/Paris"})),
            (
                "list_items",
                json!({"ids": [1, 2, 3], "nested": [{"k": "ü"}, []]}),
            ),
        ],
    ]
}

fn conversation(calls: &[(&str, Value)], content: &str) -> Vec<ChatMessage> {
    let mut assistant = ChatMessage::new(Role::Assistant, content);
    assistant.tool_calls = Some(
        calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| ToolCall {
                id: format!("call_{i}"),
                name: (*name).to_owned(),
                arguments: args.to_string(),
            })
            .collect(),
    );
    vec![
        ChatMessage::new(Role::System, "You are helpful."),
        ChatMessage::new(Role::User, "Weather and time, please?"),
        assistant,
    ]
}

fn tools() -> Vec<Value> {
    ["get_weather", "search", "get_time", "list_items"]
        .iter()
        .map(|name| {
            json!({"type": "function", "function": {
                "name": name,
                "description": "a tool",
                "parameters": {"type": "object", "properties": {}},
            }})
        })
        .collect()
}

/// The assistant turn's text: after the first `turn_start`, up to `turn_end`,
/// without a leading empty reasoning block.
fn assistant_turn<'a>(case: &Case, prompt: &'a str) -> Result<&'a str> {
    let (_, turn) = prompt
        .split_once(case.turn_start)
        .ok_or_else(|| anyhow!("no {:?} in {prompt:?}", case.turn_start))?;
    let (turn, _) = turn
        .split_once(case.turn_end)
        .ok_or_else(|| anyhow!("no {:?} in {turn:?}", case.turn_end))?;
    Ok(THINK_PREFIXES
        .iter()
        .find_map(|p| turn.strip_prefix(p))
        .unwrap_or(turn))
}

fn check(case: &Case, source: &str, calls: &[(&str, Value)]) -> Result<()> {
    let special = SpecialTokens {
        bos_token: Some("<｜begin▁of▁sentence｜>".into()),
        eos_token: Some("<｜end▁of▁sentence｜>".into()),
        ..SpecialTokens::default()
    };
    let messages = conversation(calls, case.content);
    let tools = tools();
    let kwargs = Map::new();
    let input = ChatInput {
        messages: &messages,
        tools: Some(&tools),
        add_generation_prompt: false,
        kwargs: Some(&kwargs),
        template_name: None,
    };
    let rendered =
        ChatTemplate::from_text(source.to_owned(), special).and_then(|t| t.render(&input));
    let prompt = match (rendered, case.render_error) {
        (Ok(prompt), None) => prompt,
        (Err(e), Some(known)) if e.to_string().contains(known) => return Ok(()),
        (Ok(_), Some(known)) => bail!("renders now (expected {known:?}): enable the case"),
        (Err(e), _) => bail!("rendering: {e}"),
    };
    let turn = assistant_turn(case, &prompt)?;

    let parsed = parse(case.format, turn);
    ensure!(
        parsed.content == case.content,
        "content {:?} from turn {turn:?}",
        parsed.content
    );
    ensure!(
        parsed.calls.len() == calls.len(),
        "{} calls from turn {turn:?}: {:?}",
        parsed.calls.len(),
        parsed.calls
    );
    for (got, (name, args)) in parsed.calls.iter().zip(calls) {
        ensure!(got.name == *name, "name {:?}, want {name:?}", got.name);
        let value: Value = serde_json::from_str(&got.arguments)
            .with_context(|| format!("arguments {:?}", got.arguments))?;
        ensure!(
            value == *args,
            "arguments {value}, want {args} from turn {turn:?}"
        );
    }

    // Streamed a character at a time, the same.
    let mut parser = ToolCallParser::new(case.format);
    let mut events = Vec::new();
    let mut buf = [0u8; 4];
    for c in turn.chars() {
        events.extend(parser.push(c.encode_utf8(&mut buf)));
    }
    events.extend(parser.finish());
    let streamed: Parsed = collect(events);
    ensure!(
        streamed == parsed,
        "streamed {streamed:?}, whole {parsed:?}"
    );

    // Through a choice's whole output stage, after some reasoning, in
    // random small pieces: the deltas add up to the same answer.
    let text = format!("<think>{REASONING}</think>{turn}");
    let options = ToolCallOptions {
        format: case.format,
        functions: calls.iter().map(|(name, _)| (*name).to_owned()).collect(),
        parallel: true,
    };
    for seed in 1..=20u64 {
        let mut out = ChoiceOutput::new(true, false).with_tool_calls(options.clone());
        let pieces = random_pieces(&text, seed);
        let (last, rest) = pieces.split_last().unwrap_or((&"", &[]));
        let mut deltas: Vec<ChoiceDelta> = rest.iter().map(|p| out.token(p)).collect();
        deltas.push(out.finish(last));
        let (reasoning, got) = gather(deltas)?;
        ensure!(reasoning == REASONING, "reasoning {reasoning:?}");
        ensure!(
            got == parsed,
            "seed {seed}: streamed {got:?}, whole {parsed:?}"
        );
    }
    Ok(())
}

const REASONING: &str = "They want the weather; I call the tool.";

/// `text` cut at 1 to 8 characters at a time, as a seeded generator picks.
fn random_pieces(text: &str, seed: u64) -> Vec<&str> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (state % 8 + 1) as usize;
        let at = rest
            .char_indices()
            .nth(take)
            .map_or(rest.len(), |(at, _)| at);
        pieces.push(&rest[..at]);
        rest = &rest[at..];
    }
    pieces
}

/// A choice's deltas gathered: its reasoning, and its content and calls.
fn gather(deltas: Vec<ChoiceDelta>) -> Result<(String, Parsed)> {
    let mut reasoning = String::new();
    let mut parsed = Parsed::default();
    for delta in deltas {
        reasoning += &delta.reasoning;
        parsed.content += &delta.content;
        for piece in delta.tool_calls {
            match piece {
                ToolCallDelta::Start { index, name } => {
                    ensure!(index == parsed.calls.len(), "call {index} out of order");
                    parsed.calls.push(ferroseek_engine::output::ParsedCall {
                        name,
                        arguments: String::new(),
                    });
                }
                ToolCallDelta::Arguments { index, fragment } => {
                    let call = parsed
                        .calls
                        .get_mut(index)
                        .ok_or_else(|| anyhow!("arguments of call {index} before its start"))?;
                    call.arguments += &fragment;
                }
            }
        }
    }
    Ok((reasoning, parsed))
}

#[test]
fn tool_calls_round_trip_through_the_real_templates() -> Result<()> {
    let dir = template_dir();
    if !dir.is_dir() {
        if std::env::var("FERROSEEK_REQUIRE_CHAT_TEMPLATES").as_deref() == Ok("1") {
            bail!(
                "FERROSEEK_REQUIRE_CHAT_TEMPLATES=1 but {} is missing",
                dir.display()
            );
        }
        eprintln!(
            "skipping: no chat templates at {} (set FERROSEEK_CHAT_TEMPLATES)",
            dir.display()
        );
        return Ok(());
    }
    let mut failures = Vec::new();
    for case in CASES {
        let path = dir.join(case.file);
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if ToolCallFormat::detect(&source) != Some(case.format) {
            failures.push(format!(
                "{}: detected {:?}, want {:?}",
                case.file,
                ToolCallFormat::detect(&source),
                case.format
            ));
            continue;
        }
        for calls in call_sets() {
            if let Err(e) = check(case, &source, &calls) {
                failures.push(format!("{} with {} calls: {e:#}", case.file, calls.len()));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// R1's template tests an assistant message's `content is not none`: a
/// client's `content: null` must reach it as none, not as a missing key
/// (which is undefined there, and `'<｜Assistant｜>' + undefined` fails).
#[test]
fn r1_renders_calls_with_null_content() -> Result<()> {
    let path = template_dir().join("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja");
    let Ok(source) = std::fs::read_to_string(&path) else {
        if std::env::var("FERROSEEK_REQUIRE_CHAT_TEMPLATES").as_deref() == Ok("1") {
            bail!(
                "FERROSEEK_REQUIRE_CHAT_TEMPLATES=1 but {} is missing",
                path.display()
            );
        }
        eprintln!("skipping: no {}", path.display());
        return Ok(());
    };
    let mut messages = conversation(&[("get_weather", json!({"city": "Paris"}))], "");
    messages[2].content = None;
    let mut answer = ChatMessage::new(Role::Tool, "18°C");
    answer.tool_call_id = Some("call_0".into());
    messages.push(answer);
    messages.push(ChatMessage::new(Role::Assistant, "It is 18°C."));
    let special = SpecialTokens {
        bos_token: Some("<｜begin▁of▁sentence｜>".into()),
        eos_token: Some("<｜end▁of▁sentence｜>".into()),
        ..SpecialTokens::default()
    };
    let prompt = ChatTemplate::from_text(source, special)?.render(&ChatInput::new(&messages))?;
    let want = "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n\"{\\\"city\\\":\\\"Paris\\\"}\"\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18°C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is 18°C.<｜end▁of▁sentence｜>";
    ensure!(prompt.ends_with(want), "rendered {prompt:?}");
    Ok(())
}
