//! The chat template API beyond HF parity: how errors come out, which
//! variables win, and the functions HF's environment adds.

use ferroseek_engine::{
    ChatInput, ChatMessage, ChatTemplate, Error, Role, SpecialTokens, ToolCall,
};
use serde_json::{json, Map, Value};

fn special() -> SpecialTokens {
    SpecialTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        ..SpecialTokens::default()
    }
}

fn render(template: &str, input: &ChatInput<'_>) -> Result<String, Error> {
    ChatTemplate::from_text(template, special())?.render(input)
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn raise_exception_reaches_the_caller_verbatim() {
    let messages = [ChatMessage::new(Role::System, "x")];
    let template = "{% macro check(m) %}{% if m.role == 'system' %}{{ raise_exception('No system role: ' ~ m.content) }}{% endif %}{% endmacro %}{{ check(messages[0]) }}";
    match render(template, &ChatInput::new(&messages)) {
        Err(Error::TemplateRaised(msg)) => assert_eq!(msg, "No system role: x"),
        other => panic!("expected TemplateRaised, got {other:?}"),
    }
}

#[test]
fn syntax_errors_name_the_template_and_the_problem() {
    match ChatTemplate::from_text("{% if %}", special()) {
        Err(Error::TemplateSyntax { name, message }) => {
            assert_eq!(name, "chat_template");
            assert!(message.contains("syntax error"), "{message}");
        }
        other => panic!("expected TemplateSyntax, got {other:?}"),
    }
}

#[test]
fn render_errors_say_where() {
    let messages = [ChatMessage::new(Role::User, "x")];
    match render(
        "line one\n{{ messages[0].content + 1 }}",
        &ChatInput::new(&messages),
    ) {
        Err(Error::TemplateRender { message, .. }) => assert!(
            message.contains("line 2") || message.contains(":2"),
            "{message}"
        ),
        other => panic!("expected TemplateRender, got {other:?}"),
    }
}

#[test]
fn request_kwargs_override_special_tokens_but_not_the_conversation() {
    let messages = [ChatMessage::new(Role::User, "hi")];
    let extra = kwargs(
        json!({"bos_token": "<B>", "messages": [], "add_generation_prompt": true, "thinking": true}),
    );
    let input = ChatInput {
        kwargs: Some(&extra),
        ..ChatInput::new(&messages)
    };
    let out = render("{{ bos_token }}|{{ messages | length }}|{{ add_generation_prompt }}|{{ thinking }}|{{ eos_token }}", &input);
    assert_eq!(out.ok().as_deref(), Some("<B>|1|False|True|</s>"));
}

#[test]
fn tool_call_arguments_stay_a_string_and_from_json_parses_them() {
    let mut call = ChatMessage::new(Role::Assistant, "");
    call.content = None;
    call.tool_calls = Some(vec![ToolCall {
        id: "c1".into(),
        name: "f".into(),
        arguments: r#"{"b": 1, "a": [true, null]}"#.into(),
    }]);
    let messages = [call];
    let template = "{% set args = messages[0].tool_calls[0].function.arguments %}{{ args is string }} {{ messages[0].content is none }} {% for k, v in (args | from_json).items() %}{{ k }}={{ v | tojson }};{% endfor %}";
    assert_eq!(
        render(template, &ChatInput::new(&messages)).ok().as_deref(),
        Some("True True b=1;a=[true, null];")
    );
}

#[test]
fn reasoning_is_also_passed_as_thinking() {
    let mut msg = ChatMessage::new(Role::Assistant, "4");
    msg.reasoning_content = Some("2+2".into());
    let messages = [msg];
    let out = render("{{ messages[0] | tojson }}", &ChatInput::new(&messages));
    assert_eq!(
        out.ok().as_deref(),
        Some(
            r#"{"thinking": "2+2", "role": "assistant", "content": "4", "reasoning_content": "2+2"}"#
        )
    );
}

#[test]
fn strftime_now_prints_the_current_date() {
    let messages = [ChatMessage::new(Role::User, "hi")];
    let out =
        render("{{ strftime_now('%Y-%m-%d') }}", &ChatInput::new(&messages)).unwrap_or_default();
    let year: u32 = out.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!(out.len() == 10 && year >= 2025, "{out}");
}

#[test]
fn chat_template_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn lists_in_a_namespace_change_as_in_python() {
    let messages = [ChatMessage::new(Role::User, "x")];
    let template = "{%- set ns = namespace(ids=[], n=1, other={'a': [1]}) -%}\
        {%- set _ = ns.ids.append('a') -%}{%- set _ = ns.ids.extend(['b', 'c']) -%}\
        {%- set _ = ns.ids.insert(0, 'z') -%}{%- set _ = ns.ids.remove('b') -%}\
        {{ ns.ids | tojson }} {{ ns.ids | length }} {{ ns.ids[0] }} {{ ns.ids[-1] }} \
        {{ ns.ids.pop(0) }} {{ ns.ids.pop() }} {{ ns.ids }} {{ 'yes' if ns.ids else 'no' }} \
        {%- for i in ns.ids %} {{ i }}{% endfor %} {{ ns.ids.index('a') }} {{ ns.n }} \
        {%- set _ = ns.ids.clear() %} {{ 'yes' if ns.ids else 'no' }} {{ ns.other | tojson }}";
    let out = render(template, &ChatInput::new(&messages)).unwrap();
    assert_eq!(
        out,
        "[\"z\", \"a\", \"c\"] 3 z c z c ['a'] yes a 0 1 no {\"a\": [1]}"
    );
    let err = render(
        "{% set ns = namespace(ids=[]) %}{{ ns.ids.pop() }}",
        &ChatInput::new(&messages),
    )
    .unwrap_err();
    assert!(err.to_string().contains("pop from empty list"), "{err}");
}
