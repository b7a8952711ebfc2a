//! The official OpenAI Python client (`tests/python/openai_client.py`) and
//! LangChain's `ChatOpenAI` (`tests/python/langchain_client.py`) against the
//! real binary. The interpreter comes from `FERROSEEK_PYTHON` (`.ci/run`
//! points it at a venv with `openai`, `jsonschema` and `langchain-openai`).
//! Without it, or without a script's packages, a test reports itself
//! skipped, unless `FERROSEEK_REQUIRE_PYTHON_CLIENT=1`, where it fails.
//! The same Python runs `schemathesis` against `/openapi.json`.

mod common;

use std::process::Command;

use common::Server;

const VENV: &str = "python3 -m venv .venv && .venv/bin/pip install 'openai>=1.51,<4' \
                    jsonschema 'langchain-openai>=0.3,<2' 'schemathesis>=4,<5'";

/// The Python to run with, if it can import `modules`; `None` means skip.
fn python_with(modules: &str) -> Option<String> {
    let required = std::env::var("FERROSEEK_REQUIRE_PYTHON_CLIENT").is_ok_and(|v| v == "1");
    let python = match std::env::var("FERROSEEK_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            assert!(
                !required,
                "FERROSEEK_REQUIRE_PYTHON_CLIENT=1 but FERROSEEK_PYTHON is not set: point it at \
                 a python with the packages (`{VENV}`)"
            );
            eprintln!(
                "SKIPPED: set FERROSEEK_PYTHON to a python with `{modules}` to run this test"
            );
            return None;
        }
    };
    let import = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    if !import.status.success() {
        let why = String::from_utf8_lossy(&import.stderr);
        assert!(
            !required,
            "FERROSEEK_REQUIRE_PYTHON_CLIENT=1 but {python} cannot `import {modules}` \
             (`{VENV}`):\n{why}"
        );
        eprintln!(
            "SKIPPED: {python} cannot `import {modules}`; install it to run this test:\n{why}"
        );
        return None;
    }
    Some(python)
}

/// Runs `tests/python/{script}` against a fresh server on the test model
/// (`model`: its folder by default, or a file such as its GGUF); it must
/// print `done`.
fn run_script(python: &str, script: &str, done: &str, model: Option<&str>) {
    // A second name that starts with `/`, as a model given by its absolute path is named.
    let mut args = vec![
        "--api-key",
        "sk-python",
        "--served-model-name",
        "tiny-deepseek-v3,/srv/models/tiny-deepseek-v3",
    ];
    if let Some(model) = model {
        args.extend(["--model", model]);
    }
    let server = Server::start(&args);
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .args([&path, &server.url("/v1"), "sk-python", "tiny-deepseek-v3"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} checks failed:\n{stdout}\n{stderr}\nserver logs:\n{}",
        server.logs()
    );
    assert!(stdout.contains(done), "{stdout}");
}

#[test]
fn official_python_client_works_unchanged() {
    if let Some(python) = python_with("openai, jsonschema, pydantic") {
        run_script(
            &python,
            "openai_client.py",
            "all python client checks passed",
            None,
        );
    }
}

/// The same checks against the test model read from llama.cpp's q8_0 GGUF
/// of it (`scripts/make_gguf_fixtures.sh`): weights, tokenizer and chat
/// template all from the one file.
#[test]
fn official_python_client_works_on_a_gguf_file() {
    if let Some(python) = python_with("openai, jsonschema, pydantic") {
        let gguf = format!(
            "{}/crates/model/tests/fixtures/gguf/tiny-deepseek-v3-q8_0.gguf",
            env!("CARGO_MANIFEST_DIR")
        );
        run_script(
            &python,
            "openai_client.py",
            "all python client checks passed",
            Some(&gguf),
        );
    }
}

#[test]
fn langchain_chat_openai_binds_tools_and_structures_output() {
    if let Some(python) = python_with("langchain_openai, jsonschema") {
        run_script(
            &python,
            "langchain_client.py",
            "all langchain client checks passed",
            None,
        );
    }
}

/// `schemathesis` generates requests from `/openapi.json` for every route
/// (bounded in examples, fixed seed) and checks that none is answered with
/// a 5xx, and that every response — status, content type, headers and body,
/// errors included — is one the schema publishes.
#[test]
fn openapi_schema_is_true_to_every_response() {
    let Some(python) = python_with("schemathesis") else {
        return;
    };
    let server = Server::start(&["--max-num-seqs", "4"]);
    let scratch =
        std::env::temp_dir().join(format!("ferroseek-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let cli = "import sys; from schemathesis.cli import schemathesis; \
               sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())";
    let out = Command::new(&python)
        .current_dir(&scratch)
        .args(["-c", cli, "run", &server.url("/openapi.json")])
        .args([
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--max-response-time",
            "30",
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}\nserver logs:\n{}",
        server.logs()
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
