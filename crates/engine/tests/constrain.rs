//! Constrained decoding on the embedded model's vocabulary
//! (models/tiny-deepseek-v3): random walks through each kind of grammar —
//! every step a token drawn at random from the mask — always end in output
//! the grammar describes. The tool-call grammars are checked against the
//! parsers: whatever a walk writes, the family's parser reads back as calls
//! to the allowed functions with arguments that fit their schemas.

mod common;

use std::sync::Arc;

use ferroseek_engine::constrain::Committed;
use ferroseek_engine::output::tool_calls::parse;
use ferroseek_engine::{
    FunctionSpec, Grammar, GrammarSpec, Grammars, TokenTable, Tokenizer, ToolCallFormat,
    ToolCallGrammar,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn setup() -> (Grammars, Arc<Tokenizer>) {
    let dir = common::repo_dir().join("models/tiny-deepseek-v3");
    let tokenizer = Arc::new(Tokenizer::from_dir(&dir).expect("tokenizer"));
    let table = TokenTable::new(&tokenizer, tokenizer.vocab_size());
    let grammars = Grammars::new(tokenizer.clone(), &table).expect("grammars");
    (grammars, tokenizer)
}

/// Tokens of one walk through `grammar`: each step a random allowed token,
/// until the grammar is complete or an end-of-sequence id is drawn. Half
/// the steps draw only among tokens that close something (`"`, `}`, `]`)
/// when there are any, so that open-ended grammars (any JSON object) end.
fn walk(grammar: &Grammar, tok: &Tokenizer, seed: u64) -> Vec<u32> {
    let eos = tok.eos_token_ids();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = grammar.start();
    let mut out = Vec::new();
    for _ in 0..2000 {
        c.prepare();
        let mask = c.mask().expect("an active grammar has a mask");
        let mut allowed = Vec::new();
        mask.iter_set_entries(|t| allowed.push(t as u32));
        assert!(!allowed.is_empty(), "a dead end after {out:?}");
        let closing: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|&t| eos.contains(&t) || text(tok, &[t]).contains(['"', '}', ']']))
            .collect();
        let pool = if !closing.is_empty() && rng.random_bool(0.5) {
            &closing
        } else {
            &allowed
        };
        let t = pool[rng.random_range(0..pool.len())];
        if eos.contains(&t) {
            return out;
        }
        out.push(t);
        match c.commit(t) {
            Committed::Continue => {}
            Committed::Complete => return out,
            Committed::Failed(e) => panic!("a masked token failed: {e}"),
        }
    }
    panic!("no end after 2000 tokens: {:?}", text(tok, &out))
}

fn text(tokenizer: &Tokenizer, tokens: &[u32]) -> String {
    tokenizer.decode(tokens, false).expect("decode")
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 6},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "unit": {"enum": ["c", "f"]},
            "alerts": {"type": "boolean"}
        },
        "required": ["city", "days", "unit"],
        "additionalProperties": false
    })
}

/// What [`weather_schema`] asks of a value.
fn check_weather(value: &Value) {
    let obj = value.as_object().expect("an object");
    assert!(obj
        .keys()
        .all(|k| ["city", "days", "unit", "alerts"].contains(&k.as_str())));
    assert!(obj["city"].as_str().expect("city").chars().count() <= 6);
    let days = obj["days"].as_i64().expect("days");
    assert!((1..=14).contains(&days), "{value}");
    assert!(["c", "f"].contains(&obj["unit"].as_str().expect("unit")));
    if let Some(a) = obj.get("alerts") {
        assert!(a.is_boolean());
    }
}

#[test]
fn json_schema_walks_give_valid_json() {
    let (g, tok) = setup();
    let grammar = g
        .compile(&GrammarSpec::JsonSchema(weather_schema()), None)
        .unwrap();
    for seed in 0..20 {
        let out = text(&tok, &walk(&grammar, &tok, seed));
        let value: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        check_weather(&value);
    }
}

#[test]
fn json_object_walks_give_objects() {
    let (g, tok) = setup();
    let grammar = g.compile(&GrammarSpec::JsonObject, None).unwrap();
    let mut done = 0;
    for seed in 0..10 {
        let tokens = walk(&grammar, &tok, seed);
        let out = text(&tok, &tokens);
        let value: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        assert!(value.is_object());
        done += 1;
    }
    assert_eq!(done, 10);
}

#[test]
fn regex_and_choice_walks_match() {
    let (g, tok) = setup();
    let rx = g
        .compile(&GrammarSpec::Regex("[a-c]{2,4}x".into()), None)
        .unwrap();
    let choices = vec!["yes".to_string(), "no".into(), "not <sure>\n".into()];
    let choice = g
        .compile(&GrammarSpec::Choice(choices.clone()), None)
        .unwrap();
    for seed in 0..20 {
        let out = text(&tok, &walk(&rx, &tok, seed));
        let (body, x) = out.split_at(out.len() - 1);
        assert_eq!(x, "x", "{out:?}");
        assert!((2..=4).contains(&body.len()) && body.chars().all(|c| "abc".contains(c)));
        let out = text(&tok, &walk(&choice, &tok, seed));
        assert!(choices.contains(&out), "{out:?}");
    }
}

#[test]
fn lark_grammars_compile_and_bad_ones_are_refused() {
    let (g, tok) = setup();
    let lark = g
        .compile(
            &GrammarSpec::Lark("start: \"n=\" NUM\nNUM: /[0-9]{1,3}/\n".into()),
            None,
        )
        .unwrap();
    for seed in 0..5 {
        let out = text(&tok, &walk(&lark, &tok, seed));
        let n = out.strip_prefix("n=").expect("prefix");
        assert!(!n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()));
    }
    let refused = [
        GrammarSpec::Lark("start: nothing_defined\n".into()),
        GrammarSpec::Regex("(unclosed".into()),
        GrammarSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"type": "strnig"}}})),
        GrammarSpec::JsonSchema(json!(true)),
        GrammarSpec::Choice(vec![]),
    ];
    for spec in refused {
        let err = g.compile(&spec, None).expect_err(&format!("{spec:?}"));
        assert!(!err.is_empty());
    }
}

#[test]
fn a_grammar_can_start_after_a_token() {
    let (g, tok) = setup();
    let end_think = tok.token_to_id("</think>").expect("</think>");
    let grammar = g
        .compile(&GrammarSpec::Regex("ok".into()), Some(end_think))
        .unwrap();
    let mut c = grammar.start();
    // Free until </think>: no mask, any token is fine.
    for t in tok.encode("thinking freely", false).unwrap() {
        c.prepare();
        assert!(c.mask().is_none());
        assert_eq!(c.commit(t), Committed::Continue);
    }
    assert_eq!(c.commit(end_think), Committed::Continue);
    c.prepare();
    let mask = c.mask().expect("active now");
    let mut allowed = Vec::new();
    mask.iter_set_entries(|t| allowed.push(t as u32));
    assert!(!allowed.is_empty());
    for t in allowed {
        assert!("ok".starts_with(&text(&tok, &[t])), "{t}");
    }
}

#[test]
fn text_rules_never_write_control_tokens() {
    let (g, tok) = setup();
    let grammar = g.compile(&GrammarSpec::JsonObject, None).unwrap();
    let mut c = grammar.start();
    c.prepare();
    let mask = c.mask().unwrap();
    for name in ["<｜tool▁calls▁begin｜>", "<think>", "<｜end▁of▁sentence｜>"] {
        let id = tok.token_to_id(name).unwrap();
        assert!(!mask.is_allowed(id), "{name}");
    }
}

fn functions() -> Vec<FunctionSpec> {
    vec![
        FunctionSpec {
            name: "get_weather".into(),
            parameters: weather_schema(),
        },
        FunctionSpec {
            name: "get_time".into(),
            parameters: json!({
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]},
                               "exact": {"type": "boolean"}},
                "required": ["zone"],
                "additionalProperties": false
            }),
        },
    ]
}

#[test]
fn tool_call_walks_parse_back_as_valid_calls_in_every_format() {
    let (g, tok) = setup();
    for format in ToolCallFormat::ALL {
        for parallel in [false, true] {
            let spec = GrammarSpec::ToolCalls(ToolCallGrammar {
                format,
                functions: functions(),
                parallel,
            });
            let grammar = g
                .compile(&spec, None)
                .unwrap_or_else(|e| panic!("{format}: {e}"));
            let mut several = false;
            for seed in 0..12 {
                let out = text(&tok, &walk(&grammar, &tok, seed));
                let parsed = parse(format, &out);
                assert_eq!(parsed.content, "", "{format}: {out:?}");
                assert!(!parsed.calls.is_empty(), "{format}: {out:?}");
                if !parallel {
                    assert_eq!(parsed.calls.len(), 1, "{format}: {out:?}");
                }
                several |= parsed.calls.len() > 1;
                for call in &parsed.calls {
                    let args: Value = serde_json::from_str(&call.arguments).unwrap();
                    match call.name.as_str() {
                        "get_weather" => check_weather(&args),
                        "get_time" => {
                            assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap()));
                        }
                        other => panic!("{format}: unknown function {other}"),
                    }
                }
            }
            if parallel {
                assert!(several, "{format}: no walk made several calls");
            }
        }
    }
}

#[test]
fn a_named_function_is_the_only_one_called() {
    let (g, tok) = setup();
    let only = functions().into_iter().nth(1).unwrap();
    let spec = GrammarSpec::ToolCalls(ToolCallGrammar {
        format: ToolCallFormat::DeepSeekV31,
        functions: vec![only],
        parallel: true,
    });
    let grammar = g.compile(&spec, None).unwrap();
    for seed in 0..10 {
        let out = text(&tok, &walk(&grammar, &tok, seed));
        let parsed = parse(ToolCallFormat::DeepSeekV31, &out);
        assert!(parsed.calls.iter().all(|c| c.name == "get_time"), "{out:?}");
    }
}
