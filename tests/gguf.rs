//! Serving a GGUF file: the embedded model converted by llama.cpp's
//! converter (`scripts/make_gguf_fixtures.sh`) answers as the embedded
//! model does, with the tokenizer and chat template from the file.

mod common;

use std::path::PathBuf;

use common::Server;
use serde_json::{json, Value};

fn fixture(kind: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!(
            "crates/model/tests/fixtures/gguf/tiny-deepseek-v3-{kind}.gguf"
        ))
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
async fn a_bf16_gguf_file_answers_as_the_embedded_model() {
    let embedded = Server::start(&["--served-model-name", "m"]);
    let want = answer(&embedded).await;
    let gguf = Server::start(&["--served-model-name", "m", "--model", &fixture("bf16")]);
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
    let server = Server::start(&["--served-model-name", "m", "--model", &fixture("q8_0")]);
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

#[tokio::test]
async fn a_tokenizer_folder_replaces_the_files_tokenizer() {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-deepseek-v3");
    let from_file = Server::start(&["--served-model-name", "m", "--model", &fixture("bf16")]);
    let from_folder = Server::start(&[
        "--served-model-name",
        "m",
        "--model",
        &fixture("bf16"),
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
