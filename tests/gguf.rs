//! Serving a GGUF file: the test model converted by llama.cpp's
//! converter (`scripts/make_gguf_fixtures.sh`) answers as the test
//! model does, with the tokenizer and chat template from the file; a
//! Q4_K_M file from llama.cpp's `llama-quantize` serves completions.

mod common;

use std::path::PathBuf;

use common::Server;
use serde_json::{json, Value};

/// The committed GGUF file `name`.gguf.
fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("crates/model/tests/fixtures/gguf/{name}.gguf"))
        .to_string_lossy()
        .into_owned()
}

fn chat() -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "temperature": 0,
        "max_tokens": 12,
        "logprobs": true,
    })
}

/// The answer's text, its tokens' log-probs and the prompt's size.
async fn answer(server: &Server) -> (String, Vec<f64>, u64) {
    let v = server.post_json("/v1/chat/completions", &chat()).await;
    let choice = &v["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let logprobs = choice["logprobs"]["content"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["logprob"].as_f64()).collect())
        .unwrap_or_default();
    (
        text,
        logprobs,
        v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn a_bf16_gguf_file_answers_as_the_test_model() {
    let test_model = Server::start(&["--served-model-name", "m"]);
    let want = answer(&test_model).await;
    let gguf = Server::start(&[
        "--served-model-name",
        "m",
        "--model",
        &fixture("tiny-deepseek-v3-bf16"),
    ]);
    let got = answer(&gguf).await;
    assert!(!want.0.is_empty() && want.2 > 0, "{want:?}");
    assert_eq!(got.0, want.0);
    assert_eq!(got.2, want.2);
    assert_eq!(got.1.len(), want.1.len());
    for (g, w) in got.1.iter().zip(&want.1) {
        assert!((g - w).abs() < 1e-4, "{got:?} {want:?}");
    }
}

#[tokio::test]
async fn a_q8_0_gguf_file_is_served_as_q8_0() {
    let server = Server::start(&[
        "--served-model-name",
        "m",
        "--model",
        &fixture("tiny-deepseek-v3-q8_0"),
    ]);
    let (text, logprobs, prompt) = answer(&server).await;
    assert!(!text.is_empty() && prompt > 0);
    assert_eq!(logprobs.len(), 12);
    let logs = server.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("weights loaded") && l.contains("Q8_0")),
        "{logs}"
    );
}

/// The `Q4_K_M` file llama.cpp's `llama-quantize` made (a random
/// DeepSeek-V3 256 wide with a byte-level tokenizer and no chat template)
/// serves completions: greedy answers, with their log-probabilities, the
/// same when asked again.
#[tokio::test]
async fn a_q4_k_m_file_from_llama_quantize_serves_completions() {
    let file = fixture("k-quant-v3-Q4_K_M");
    let server = Server::start(&["--served-model-name", "m", "--model", &file]);
    let body = json!({"model": "m", "prompt": "The sea is", "max_tokens": 8, "temperature": 0,
                      "ignore_eos": true, "logprobs": 1});
    let first = server.post_json("/v1/completions", &body).await;
    let choice = &first["choices"][0];
    assert_eq!(choice["finish_reason"], "length", "{first}");
    assert_eq!(first["usage"]["completion_tokens"], 8, "{first}");
    let logprobs = choice["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 8);
    assert!(logprobs
        .iter()
        .all(|l| l.as_f64().is_some_and(|l| l <= 0.0)));
    let again = server.post_json("/v1/completions", &body).await;
    assert_eq!(again["choices"][0]["text"], choice["text"]);
    assert_eq!(again["choices"][0]["logprobs"], choice["logprobs"]);
}

#[tokio::test]
async fn a_tokenizer_folder_replaces_the_files_tokenizer() {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-deepseek-v3");
    let from_file = Server::start(&[
        "--served-model-name",
        "m",
        "--model",
        &fixture("tiny-deepseek-v3-bf16"),
    ]);
    let from_folder = Server::start(&[
        "--served-model-name",
        "m",
        "--model",
        &fixture("tiny-deepseek-v3-bf16"),
        "--tokenizer",
        folder.to_str().unwrap(),
    ]);
    let logs = from_folder.logs();
    assert!(
        logs.contains("sampling defaults from generation_config.json"),
        "{logs}"
    );
    let (want, got) = (answer(&from_file).await, answer(&from_folder).await);
    assert_eq!(got.0, want.0);
    assert_eq!(got.2, want.2);
}
