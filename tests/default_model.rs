//! The embedded default model (`models/arith-deepseek-v3`, trained by
//! `scripts/train_default_model.py`) gives right answers through the real
//! server: integer additions and subtractions it never saw (drawn here from
//! a seed the training never used), asked over HTTP at temperature 0, with
//! thinking on (the trace in `reasoning_content`, the answer in `content`)
//! and off, through its `calculate` tool, quantized, and batched.
//!
//! The accuracy floors are the model's measured rates less three points
//! (numerics differ a little between CPUs): with thinking 97.5% against a
//! goal of 97% (99.2% on the 400 problems of the quantized variants' test),
//! without thinking 92.0% against 90%. The tool-call rates meet their goals
//! and are held to them.

mod common;

use common::Server;
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// Held-out problems: each operand has 1 to 4 digits (the count uniform),
/// the operation is `+` or `-`, so results run from -9998 to 19998.
fn problems(seed: u64, n: usize) -> Vec<Problem> {
    let mut state = seed;
    let mut next = move |bound: u64| {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    };
    let operand = |next: &mut dyn FnMut(u64) -> u64| {
        let digits = 1 + next(4) as u32;
        let low = if digits == 1 {
            0
        } else {
            10i64.pow(digits - 1)
        };
        low + next((10i64.pow(digits) - low) as u64) as i64
    };
    (0..n)
        .map(|_| {
            let a = operand(&mut next);
            let b = operand(&mut next);
            let plus = next(2) == 0;
            let phrasing = next(3);
            Problem {
                a,
                b,
                plus,
                phrasing,
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Problem {
    a: i64,
    b: i64,
    plus: bool,
    phrasing: u64,
}

impl Problem {
    fn expression(&self) -> String {
        format!(
            "{} {} {}",
            self.a,
            if self.plus { '+' } else { '-' },
            self.b
        )
    }

    fn question(&self) -> String {
        match self.phrasing {
            0 => format!("What is {}?", self.expression()),
            1 => self.expression(),
            _ if self.plus => format!("Add {} and {}.", self.a, self.b),
            _ => format!("Subtract {} from {}.", self.b, self.a),
        }
    }

    fn answer(&self) -> String {
        (if self.plus {
            self.a + self.b
        } else {
            self.a - self.b
        })
        .to_string()
    }
}

fn calculate_tool() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "The expression to evaluate, e.g. 12 + 7"}},
                "required": ["expression"]
            }
        }
    }])
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Thinking,
    Plain,
}

fn request(messages: Value, mode: Mode, tools: bool) -> Value {
    let mut body = json!({
        "model": "arith-deepseek-v3",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 300,
        "chat_template_kwargs": {"thinking": mode == Mode::Thinking},
    });
    if tools {
        body["tools"] = calculate_tool();
    }
    body
}

/// The first choice's message of each request, sent `concurrency` at a time.
async fn ask_all(server: &Server, bodies: Vec<Value>, concurrency: usize) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut out = vec![Value::Null; bodies.len()];
    let mut pending = bodies.into_iter().enumerate();
    let mut running = JoinSet::new();
    loop {
        while running.len() < concurrency {
            let Some((i, body)) = pending.next() else {
                break;
            };
            let client = client.clone();
            let url = server.url("/v1/chat/completions");
            running.spawn(async move {
                let resp = client.post(url).json(&body).send().await.unwrap();
                let status = resp.status();
                let reply: Value = resp.json().await.unwrap();
                assert_eq!(status, 200, "{reply}");
                (i, reply["choices"][0]["message"].clone())
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (i, message) = done.unwrap();
        out[i] = message;
    }
    out
}

fn questions(problems: &[Problem], mode: Mode) -> Vec<Value> {
    problems
        .iter()
        .map(|p| {
            request(
                json!([{"role": "user", "content": p.question()}]),
                mode,
                false,
            )
        })
        .collect()
}

/// The share of `replies` whose content is exactly the answer.
fn accuracy(problems: &[Problem], replies: &[Value]) -> f64 {
    let right = problems
        .iter()
        .zip(replies)
        .filter(|(p, r)| r["content"].as_str() == Some(p.answer().as_str()))
        .count();
    right as f64 / problems.len() as f64
}

fn misses(problems: &[Problem], replies: &[Value]) -> String {
    problems
        .iter()
        .zip(replies)
        .filter(|(p, r)| r["content"].as_str() != Some(p.answer().as_str()))
        .take(5)
        .map(|(p, r)| format!("{} = {} but got {}\n", p.question(), p.answer(), r))
        .collect()
}

const SEED: u64 = 0x0019_d3fa_0175_e11d;
const N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thinking_on_answers_with_the_trace_in_reasoning() {
    let server = Server::start_embedded(&[]);
    let problems = problems(SEED, N);
    let replies = ask_all(&server, questions(&problems, Mode::Thinking), 32).await;
    let acc = accuracy(&problems, &replies);
    println!("thinking on: {:.1}% of {N}", 100.0 * acc);
    assert!(acc >= 0.945, "{acc}\n{}", misses(&problems, &replies));
    for (p, r) in problems.iter().zip(&replies) {
        let trace = r["reasoning_content"].as_str().unwrap_or_default();
        if r["content"].as_str() == Some(p.answer().as_str()) {
            // The digit-by-digit trace ends on the answer it gives.
            assert!(trace.ends_with(&format!("answer: {}", p.answer())), "{r}");
            assert!(trace.lines().count() >= 3, "{r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thinking_off_answers_directly() {
    let server = Server::start_embedded(&[]);
    let problems = problems(SEED + 1, N);
    let replies = ask_all(&server, questions(&problems, Mode::Plain), 32).await;
    let acc = accuracy(&problems, &replies);
    println!("thinking off: {:.1}% of {N}", 100.0 * acc);
    assert!(acc >= 0.89, "{acc}\n{}", misses(&problems, &replies));
    assert!(replies
        .iter()
        .all(|r| r["reasoning_content"].is_null() || r["reasoning_content"] == ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_calculate_tool_is_called_and_its_result_answered() {
    let server = Server::start_embedded(&[]);
    let problems = problems(SEED + 2, 100);
    let bodies = problems
        .iter()
        .map(|p| {
            request(
                json!([{"role": "user", "content": p.question()}]),
                Mode::Plain,
                true,
            )
        })
        .collect();
    let replies = ask_all(&server, bodies, 32).await;
    let well_formed = problems
        .iter()
        .zip(&replies)
        .filter(|(p, r)| {
            let calls = r["tool_calls"].as_array().cloned().unwrap_or_default();
            let [call] = calls.as_slice() else {
                return false;
            };
            let args: Value = call["function"]["arguments"]
                .as_str()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or(Value::Null);
            call["function"]["name"] == "calculate"
                && args == json!({"expression": p.expression()})
                && r["content"].is_null()
        })
        .count();
    println!("tool calls: {well_formed} of {} right", problems.len());
    assert!(well_formed >= 95, "{well_formed}: {}", replies[0]);

    // The tool's result comes back; the model answers with it.
    let bodies = problems
        .iter()
        .zip(&replies)
        .map(|(p, r)| {
            let id = r["tool_calls"][0]["id"].as_str().unwrap_or("call_0");
            let call = json!({"id": id, "type": "function", "function": {
                "name": "calculate",
                "arguments": json!({"expression": p.expression()}).to_string()}});
            let messages = json!([
                {"role": "user", "content": p.question()},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": id, "content": p.answer()},
            ]);
            request(messages, Mode::Plain, true)
        })
        .collect();
    let answers = ask_all(&server, bodies, 32).await;
    let acc = accuracy(&problems, &answers);
    println!("answers after the tool: {:.1}%", 100.0 * acc);
    assert!(acc >= 0.95, "{acc}\n{}", misses(&problems, &answers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anything_else_gets_what_it_can_do() {
    let server = Server::start_embedded(&[]);
    let bodies = [
        "Hello!",
        "What is the capital of Peru?",
        "Can you write me a short story about a dragon?",
        "What is 12 * 34?",
    ]
    .iter()
    .flat_map(|q| {
        [Mode::Plain, Mode::Thinking]
            .map(|mode| request(json!([{"role": "user", "content": q}]), mode, false))
    })
    .collect();
    for reply in ask_all(&server, bodies, 8).await {
        let content = reply["content"].as_str().unwrap_or_default();
        assert!(content.contains("add and subtract"), "{reply}");
    }
}

/// Quantized weights, and the latent cache in bf16, answer within two
/// points of the model as trained; the cache in fp8 (4 significant bits)
/// within five (measured: 98.8% and 92.0% against 99.2% and 92.5%). Over
/// 400 problems a point is four of them: over 100, a bound of two points
/// was within what a few near-ties flipping either way move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quantized_models_and_narrow_caches_answer_within_their_bounds() {
    let problems = problems(SEED + 3, 400);
    let mut rates = vec![];
    let variants: [(&[&str], f64); 5] = [
        (&[], 0.0),
        (&["--quantize", "q8_0"], 0.02),
        (&["--quantize", "q4_k"], 0.02),
        (&["--kv-cache-dtype", "bf16"], 0.02),
        (&["--kv-cache-dtype", "fp8"], 0.05),
    ];
    for (flags, _) in variants {
        let server = Server::start_embedded(flags);
        let mut rate = vec![];
        for mode in [Mode::Thinking, Mode::Plain] {
            let replies = ask_all(&server, questions(&problems, mode), 32).await;
            rate.push(accuracy(&problems, &replies));
        }
        println!(
            "{flags:?}: thinking on {:.1}%, off {:.1}%",
            100.0 * rate[0],
            100.0 * rate[1]
        );
        rates.push(rate);
    }
    for (variant, (flags, points)) in rates.iter().zip(variants).skip(1) {
        for (v, full) in variant.iter().zip(&rates[0]) {
            assert!(v + points + 1e-9 >= *full, "{flags:?}: {rates:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_at_once_answer_as_one_at_a_time() {
    let server = Server::start_embedded(&[]);
    let problems = problems(SEED + 4, 16);
    let mut bodies = questions(&problems, Mode::Thinking);
    bodies.extend(questions(&problems, Mode::Plain));
    let alone = ask_all(&server, bodies.clone(), 1).await;
    let together = ask_all(&server, bodies, 16).await;
    assert_eq!(alone, together);
}
