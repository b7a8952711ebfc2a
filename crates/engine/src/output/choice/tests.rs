use super::*;
use proptest::prelude::*;

const V31_TWO: &str = "Let me look.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"tz\": \"CET\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜> Done.";

/// A choice's output gathered whole: reasoning, content, calls (name, arguments).
#[derive(Debug, Default, PartialEq, Eq)]
struct Whole {
    reasoning: String,
    content: String,
    calls: Vec<(String, String)>,
}

fn gather(deltas: impl IntoIterator<Item = ChoiceDelta>) -> Whole {
    let mut whole = Whole::default();
    for delta in deltas {
        whole.reasoning += &delta.reasoning;
        whole.content += &delta.content;
        for piece in delta.tool_calls {
            match piece {
                ToolCallDelta::Start { index, name } => {
                    assert_eq!(index, whole.calls.len(), "calls start in order");
                    whole.calls.push((name, String::new()));
                }
                ToolCallDelta::Arguments { index, fragment } => {
                    assert!(index + 1 == whole.calls.len(), "arguments of the open call");
                    whole.calls[index].1 += &fragment;
                }
            }
        }
    }
    whole
}

fn tools(format: ToolCallFormat, names: &[&str], parallel: bool) -> ToolCallOptions {
    ToolCallOptions {
        format,
        functions: names.iter().map(|n| n.to_string()).collect(),
        parallel,
    }
}

fn v31(parallel: bool) -> ChoiceOutput {
    ChoiceOutput::new(true, false).with_tool_calls(tools(
        ToolCallFormat::DeepSeekV31,
        &["get_weather", "get_time"],
        parallel,
    ))
}

/// `pieces` through `out`, the last one as the finishing text.
fn run(mut out: ChoiceOutput, pieces: &[&str]) -> Whole {
    let (last, rest) = pieces.split_last().unwrap_or((&"", &[]));
    let mut deltas: Vec<ChoiceDelta> = rest.iter().map(|p| out.token(p)).collect();
    deltas.push(out.finish(last));
    gather(deltas)
}

fn call(name: &str, arguments: &str) -> (String, String) {
    (name.to_owned(), arguments.to_owned())
}

#[test]
fn choice_output_counts_tokens_that_start_inside_think_as_reasoning() {
    let mut out = ChoiceOutput::new(true, false);
    let mut all = ChoiceDelta::default();
    for text in ["<think>", "a", "b</think>", "c"] {
        all.append(out.token(text));
    }
    all.append(out.finish("d"));
    assert_eq!(all.reasoning, "ab");
    assert_eq!(all.content, "cd");
    // "a" and "b</think>" came inside; the tag's own token did not.
    assert_eq!(out.reasoning_tokens(), 2);
}

#[test]
fn plain_choice_output_is_all_content() {
    let mut out = ChoiceOutput::plain();
    assert_eq!(out.token("<think>x").content, "<think>x");
    assert_eq!(out.finish("</think>").content, "</think>");
    assert_eq!(out.reasoning_tokens(), 0);
}

#[test]
fn calls_come_out_of_the_content_around_them() {
    let whole = run(v31(true), &[V31_TWO]);
    assert_eq!(whole.content, "Let me look. Done.");
    assert_eq!(
        whole.calls,
        vec![
            call("get_weather", r#"{"city":"Paris"}"#),
            call("get_time", r#"{"tz":"CET"}"#)
        ]
    );
    // Without tools the markup is content.
    assert_eq!(
        run(ChoiceOutput::new(true, false), &[V31_TWO]).content,
        V31_TWO
    );
}

#[test]
fn reasoning_before_calls_stays_reasoning() {
    let text = format!("<think>which tool?</think>{V31_TWO}");
    let mut out = v31(true);
    let first = out.token(&text[..12]);
    assert_eq!(first.reasoning, "which");
    let whole = gather([first, out.finish(&text[12..])]);
    assert_eq!(whole.reasoning, "which tool?");
    assert_eq!(whole.content, "Let me look. Done.");
    assert_eq!(whole.calls.len(), 2);
}

#[test]
fn a_malformed_call_or_an_undeclared_function_is_text() {
    let bad_json = "a<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"tz\": <｜tool▁call▁end｜><｜tool▁calls▁end｜>b";
    let whole = run(v31(true), &[bad_json]);
    assert_eq!(whole.content, bad_json);
    assert!(whole.calls.is_empty());
    let out = ChoiceOutput::new(false, false).with_tool_calls(tools(
        ToolCallFormat::DeepSeekV31,
        &["get_weather"],
        true,
    ));
    let whole = run(out, &[V31_TWO]);
    assert_eq!(whole.content, V31_TWO);
    assert!(whole.calls.is_empty());
}

#[test]
fn without_parallel_calls_only_the_first_is_kept_and_the_rest_dropped() {
    let text = format!("{V31_TWO}{V31_TWO}");
    let whole = run(v31(false), &[&text]);
    assert_eq!(
        whole.calls,
        vec![call("get_weather", r#"{"city":"Paris"}"#)]
    );
    assert_eq!(whole.content, "Let me look. Done.Let me look. Done.");
}

#[test]
fn other_special_tokens_are_taken_out_even_cut_in_pieces() {
    let hidden: Arc<[String]> =
        vec!["<｜end▁of▁sentence｜>".to_owned(), "<｜▁pad▁｜>".into()].into();
    let out = v31(true).hiding(hidden.clone());
    let text = format!("<｜▁pad▁｜>{V31_TWO}<｜end▁of▁sentence｜>");
    let pieces: Vec<&str> = vec![
        &text[..4],
        &text[4..20],
        &text[20..text.len() - 5],
        &text[text.len() - 5..],
    ];
    let whole = run(out, &pieces);
    assert_eq!(whole.content, "Let me look. Done.");
    assert_eq!(whole.calls.len(), 2);
    // A held start that never completes is released at the end.
    let whole = run(ChoiceOutput::plain().hiding(hidden), &["a<｜end", "▁of"]);
    assert_eq!(whole.content, "a<｜end▁of");
}

/// (format, functions, the model's text) for every format.
fn samples() -> Vec<(ToolCallFormat, &'static [&'static str], String)> {
    vec![
        (ToolCallFormat::DeepSeekV31, &["get_weather", "get_time"], format!("<think>hm</think>{V31_TWO}")),
        (
            ToolCallFormat::DeepSeekV3,
            &["f", "g"],
            "<think>x</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": [1, \"ü\"]}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>".to_owned(),
        ),
        (
            ToolCallFormat::Dsml,
            &["f"],
            "Sure.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"s\" string=\"true\">é</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>".to_owned(),
        ),
        (
            ToolCallFormat::KimiK2,
            &["search"],
            "ok<|tool_calls_section_begin|><|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{\"q\": \"<|\"}<|tool_call_end|><|tool_calls_section_end|>".to_owned(),
        ),
    ]
}

proptest! {
    #[test]
    fn streamed_deltas_add_up_to_the_whole(
        sample in 0usize..4,
        parallel: bool,
        cuts in proptest::collection::vec(0usize..400, 0..16),
    ) {
        let (format, names, text) = samples().swap_remove(sample);
        let make = || ChoiceOutput::new(true, false).with_tool_calls(tools(format, names, parallel));
        let mut bounds: Vec<usize> = cuts
            .into_iter()
            .map(|c| c % (text.len() + 1))
            .filter(|c| text.is_char_boundary(*c))
            .collect();
        bounds.extend([0, text.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        let whole = run(make(), &[&text]);
        prop_assert!(!whole.calls.is_empty());
        prop_assert_eq!(run(make(), &pieces), whole);
    }
}
