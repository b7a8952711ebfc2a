//! The Rust `async-openai` client, unchanged, against the real binary.

mod common;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use common::Server;
use futures_util::StreamExt;

fn client(server: &Server, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.url("/v1"))
            .with_api_key(key),
    )
}

#[tokio::test]
async fn async_openai_chat_stream_completions_models_and_errors() {
    let server = Server::start(&["--api-key", "sk-test"]);
    let c = client(&server, "sk-test");

    let models = c.models().list().await.unwrap();
    assert_eq!(models.data[0].id, "tiny-deepseek-v3");

    let message = ChatCompletionRequestUserMessageArgs::default()
        .content("Hello!")
        .build()
        .unwrap();
    let request = CreateChatCompletionRequestArgs::default()
        .model("tiny-deepseek-v3")
        .messages(vec![message.clone().into()])
        .max_completion_tokens(6u32)
        .n(2u8)
        .logprobs(true)
        .top_logprobs(2u8)
        .seed(7i64)
        .build()
        .unwrap();
    let response = c.chat().create(request).await.unwrap();
    assert_eq!(response.choices.len(), 2);
    let usage = response.usage.unwrap();
    assert_eq!(usage.completion_tokens, 12);
    let logprobs = response.choices[0].logprobs.as_ref().unwrap();
    assert_eq!(logprobs.content.as_ref().unwrap().len(), 6);

    let request = CreateChatCompletionRequestArgs::default()
        .model("tiny-deepseek-v3")
        .messages(vec![message.into()])
        .max_completion_tokens(5u32)
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        })
        .build()
        .unwrap();
    let mut stream = c.chat().create_stream(request).await.unwrap();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
        if chunk.usage.is_some() {
            usage = chunk.usage;
        }
    }
    assert!(finish.is_some());
    assert_eq!(usage.unwrap().completion_tokens, 5);

    let request = CreateCompletionRequestArgs::default()
        .model("tiny-deepseek-v3")
        .prompt(vec![10u32, 20, 30])
        .max_tokens(4u32)
        .echo(true)
        .logprobs(1u8)
        .build()
        .unwrap();
    let completion = c.completions().create(request).await.unwrap();
    assert_eq!(completion.choices.len(), 1);
    let logprobs = completion.choices[0].logprobs.as_ref().unwrap();
    assert_eq!(logprobs.tokens.len(), 3 + 4);

    // Errors come back as OpenAI API errors with the right status.
    let bad = CreateCompletionRequestArgs::default()
        .model("no-such-model")
        .prompt("x")
        .build()
        .unwrap();
    match c.completions().create(bad).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 404);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected a 404 API error, got {other:?}"),
    }
    let wrong_key = client(&server, "sk-wrong");
    match wrong_key.models().list().await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.status_code.as_u16(), 401),
        other => panic!("expected a 401 API error, got {other:?}"),
    }
}
