//! The deployment files hold together without a Docker engine: the compose
//! files parse as YAML and point at files that exist, every FERROSEEK_*
//! variable they set is a real flag of the server, and the Dockerfile
//! builds with the README's local build command.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose(path: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one YAML document");
    docs.into_iter().next().unwrap()
}

/// The `--help` text of `ferroseek serve`, which lists every flag's env var.
fn serve_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferroseek"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn check_service(file: &str, name: &str, service: &Yaml, help: &str) {
    let ctx = format!("{file}: service `{name}`");
    if let Some(build) = service["build"].as_hash() {
        let build = Yaml::Hash(build.clone());
        let context = Path::new(file)
            .parent()
            .unwrap()
            .join(build["context"].as_str().unwrap());
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
        assert!(
            root().join(&dockerfile).exists(),
            "{ctx}: {} exists",
            dockerfile.display()
        );
    }
    if let Some(env) = service["environment"].as_hash() {
        for key in env.keys() {
            let key = key.as_str().unwrap();
            if key.starts_with("FERROSEEK_") {
                assert!(
                    help.contains(&format!("[env: {key}")),
                    "{ctx}: `{key}` is a server flag"
                );
            }
        }
    }
    if let Some(health) = service["healthcheck"].as_hash() {
        let test = Yaml::Hash(health.clone())["test"].clone();
        let words: Vec<&str> = test
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(
            words.join(" ").contains("/health"),
            "{ctx}: healthcheck asks /health"
        );
    }
    if let Some(volumes) = service["volumes"].as_vec() {
        for v in volumes.iter().filter_map(Yaml::as_str) {
            let source = v.split(':').next().unwrap();
            if source.starts_with('.') {
                let path = Path::new(file).parent().unwrap().join(source);
                assert!(
                    root().join(&path).exists(),
                    "{ctx}: {} exists",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn compose_files_parse_and_refer_to_real_things() {
    let help = serve_help();
    for file in ["docker/compose.yaml", "docker/compose.scale.yaml"] {
        let doc = compose(file);
        let services = doc["services"]
            .as_hash()
            .unwrap_or_else(|| panic!("{file}: services"));
        assert!(!services.is_empty());
        let declared: Vec<&str> = doc["volumes"]
            .as_hash()
            .map(|h| h.keys().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        for (name, service) in services {
            let name = name.as_str().unwrap();
            check_service(file, name, service, &help);
            for v in service["volumes"]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(Yaml::as_str)
            {
                let source = v.split(':').next().unwrap();
                if !source.starts_with('.') && !source.starts_with('/') {
                    assert!(
                        declared.contains(&source),
                        "{file}: volume `{source}` is declared"
                    );
                }
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_with_the_readme_command() {
    let readme = read("README.md");
    let dockerfile = read("docker/Dockerfile");
    let build = "cargo build --release";
    assert!(
        readme.contains(build),
        "the README gives `{build}` for a local build"
    );
    let runs: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("cargo "))
        .collect();
    assert!(!runs.is_empty());
    for line in runs {
        let cmd = line
            .trim()
            .trim_start_matches("RUN")
            .trim()
            .trim_start_matches("&&")
            .trim();
        let cmd = cmd.trim_end_matches('\\').trim();
        assert_eq!(
            cmd, build,
            "the Dockerfile builds as the README says: {line:?}"
        );
    }
    // The image runs as a non-root user, exposes 8000 and checks /health.
    assert!(dockerfile.contains("\nUSER ferroseek"));
    assert!(dockerfile.contains("\nEXPOSE 8000"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/health"));
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
}

#[test]
fn the_dependency_layer_has_a_placeholder_for_every_bench() {
    let dockerfile = read("docker/Dockerfile");
    for (manifest, dir) in [
        ("Cargo.toml", ""),
        ("crates/model/Cargo.toml", "crates/model/"),
        ("crates/engine/Cargo.toml", "crates/engine/"),
    ] {
        let text = read(manifest);
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "[[bench]]" {
                let name = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("name = "))
                    .map(|n| n.trim_matches('"'))
                    .unwrap_or_else(|| panic!("{manifest}: [[bench]] starts with its name"));
                let placeholder = format!("{dir}benches/{name}");
                assert!(
                    dockerfile.contains(&placeholder),
                    "docker/Dockerfile's dependency layer needs a placeholder for {placeholder}.rs"
                );
            }
        }
    }
}
