//! The official OpenAI Python client (`tests/python/openai_client.py`)
//! against the real binary. The interpreter comes from `FERROSEEK_PYTHON`
//! (`.ci/run` points it at a venv with `openai` installed). Without it the
//! test reports itself skipped, unless `FERROSEEK_REQUIRE_PYTHON_CLIENT=1`,
//! where it fails.

mod common;

use std::process::Command;

use common::Server;

#[test]
fn official_python_client_works_unchanged() {
    let python = match std::env::var("FERROSEEK_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let required = std::env::var("FERROSEEK_REQUIRE_PYTHON_CLIENT").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "FERROSEEK_REQUIRE_PYTHON_CLIENT=1 but FERROSEEK_PYTHON is not set: point it at a \
                 python with the `openai` package (`python3 -m venv .venv && .venv/bin/pip install openai`)"
            );
            eprintln!("SKIPPED: set FERROSEEK_PYTHON to a python with the `openai` package to run this test");
            return;
        }
    };
    // A second name that starts with `/`, as a model given by its absolute path is named.
    let server = Server::start(&[
        "--api-key",
        "sk-python",
        "--served-model-name",
        "tiny-deepseek-v3,/srv/models/tiny-deepseek-v3",
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let out = Command::new(&python)
        .args([script, &server.url("/v1"), "sk-python", "tiny-deepseek-v3"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client checks failed:\n{stdout}\n{stderr}\nserver logs:\n{}",
        server.logs()
    );
    assert!(
        stdout.contains("all python client checks passed"),
        "{stdout}"
    );
}
