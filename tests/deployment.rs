//! The deployment files hold together without a Docker engine: the compose
//! files parse as YAML and point at files that exist, every FERROSEEK_*
//! variable they set is a real flag of the server, every build argument they
//! pass is one the Dockerfile declares, the GPU override reserves a GPU for a
//! device the server accepts, and the Dockerfile builds with the README's
//! local build commands, CPU and CUDA.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let out = Command::new(env!("CARGO_BIN_EXE_ferroseek"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The value compose uses when the variable is unset: `${NAME:-default}`
/// gives `default`; anything else is taken as written.
fn compose_default(value: &Yaml) -> String {
    let text = match value {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        other => panic!("not a scalar: {other:?}"),
    };
    match text
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .and_then(|t| t.split_once(":-"))
    {
        Some((_, default)) => default.to_string(),
        None => text,
    }
}

/// The names of a Dockerfile's `ARG`s.
fn dockerfile_args(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ARG "))
        .map(|a| a.split('=').next().unwrap().trim().to_string())
        .collect()
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
        let declared = dockerfile_args(&read(dockerfile.to_str().unwrap()));
        for arg in build["args"].as_hash().into_iter().flat_map(|h| h.keys()) {
            let arg = arg.as_str().unwrap();
            assert!(
                declared.iter().any(|d| d == arg),
                "{ctx}: build argument `{arg}` is an ARG of {}",
                dockerfile.display()
            );
        }
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
    for file in [
        "docker/compose.yaml",
        "docker/compose.scale.yaml",
        "docker/compose.gpu.yaml",
    ] {
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

/// The `cargo` commands of the Dockerfile's `RUN`s, as written.
fn dockerfile_cargo_commands(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split("&&"))
        .map(|c| {
            c.trim()
                .trim_start_matches("RUN ")
                .trim_end_matches('\\')
                .trim()
        })
        .filter(|c| c.split_whitespace().next() == Some("cargo"))
        .map(str::to_string)
        .collect()
}

/// What the shell of a `RUN` makes of `command` when the build argument
/// `FEATURES` is `features` (an unknown variable is an error, not empty).
fn expand_features(command: &str, features: &str) -> String {
    let out = Command::new("sh")
        .arg("-uc")
        .arg(format!("echo {command}"))
        .env("FEATURES", features)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sh expands {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The default of `ARG name=default` in a Dockerfile.
fn dockerfile_arg_default(dockerfile: &str, name: &str) -> String {
    dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("docker/Dockerfile has `ARG {name}=`"))
        .trim_matches('"')
        .to_string()
}

#[test]
fn the_dockerfile_builds_with_the_readme_commands() {
    let readme = read("README.md");
    let dockerfile = read("docker/Dockerfile");
    let cpu = "cargo build --release";
    let gpu = "cargo build --release --features cuda";
    for build in [cpu, gpu] {
        assert!(
            readme.lines().any(|l| l.trim() == build),
            "the README gives `{build}` on a line of its own"
        );
    }
    let commands = dockerfile_cargo_commands(&dockerfile);
    assert!(!commands.is_empty());
    let default = dockerfile_arg_default(&dockerfile, "FEATURES");
    for command in &commands {
        // The default image is the CPU build; FEATURES=cuda the GPU build.
        assert_eq!(
            expand_features(command, &default),
            cpu,
            "the default build is the README's: {command:?}"
        );
        assert_eq!(
            expand_features(command, "cuda"),
            gpu,
            "the CUDA build is the README's: {command:?}"
        );
    }
    // FEATURES also picks the stages to build on and to run in.
    for stage in [
        "toolchain-cpu",
        "toolchain-cuda",
        "runtime-cpu",
        "runtime-cuda",
    ] {
        assert!(
            dockerfile.contains(&format!(" AS {stage}\n")),
            "docker/Dockerfile has a stage `{stage}`"
        );
    }
    assert!(dockerfile.contains("\nFROM toolchain-${FEATURES:-cpu} AS build\n"));
    assert!(dockerfile.contains("\nFROM runtime-${FEATURES:-cpu}\n"));
    // The image runs as a non-root user, exposes 8000 and checks /health.
    assert!(dockerfile.contains("\nUSER ferroseek"));
    assert!(dockerfile.contains("\nEXPOSE 8000"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/health"));
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
}

/// The image builds with the Rust the workspace declares: candle-core 0.11.1
/// needs 1.94 (older compilers reject its `__cpuid_count` outside `unsafe`;
/// checked with `cargo +1.93 check`, which fails, and `cargo +1.94 check
/// --workspace --all-targets`, which passes), and the declared version
/// must be one the build image has.
#[test]
fn the_image_has_the_declared_rust() {
    let manifest = read("Cargo.toml");
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .expect("the workspace declares a rust-version")
        .trim_matches('"')
        .to_string();
    let image = dockerfile_arg_default(&read("docker/Dockerfile"), "RUST_IMAGE");
    assert_eq!(
        image,
        format!("rust:{declared}-bookworm"),
        "docker/Dockerfile's RUST_IMAGE is the declared rust-version"
    );
}

/// Whether the server takes `FERROSEEK_DEVICE=value`: a value clap refuses
/// is a usage error (exit 2); an accepted one gets as far as opening the
/// device, which this CPU build refuses with its own message (exit 1). A
/// CUDA build with a GPU would go on to load, and stops at the missing chat
/// template.
fn server_accepts_device(value: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroseek"))
        .args([
            "serve",
            "--port",
            "0",
            "--chat-template",
            "/nonexistent/t.jinja",
        ])
        .env("FERROSEEK_DEVICE", value)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(2) => false,
        Some(1) => {
            if !cfg!(feature = "cuda") && value != "cpu" {
                assert!(stderr.contains("built without CUDA"), "{stderr}");
            }
            true
        }
        other => panic!("FERROSEEK_DEVICE={value}: exit {other:?}\n{stderr}"),
    }
}

#[test]
fn the_gpu_override_reserves_an_nvidia_gpu_for_the_cuda_image() {
    let file = "docker/compose.gpu.yaml";
    let doc = compose(file);
    let base = compose("docker/compose.yaml");
    let services = doc["services"].as_hash().unwrap();
    assert!(!services.is_empty());
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let ctx = format!("{file}: service `{name}`");
        assert!(
            !base["services"][name].is_badvalue(),
            "{ctx} overrides a service of docker/compose.yaml"
        );
        assert_ne!(
            service["image"], base["services"][name]["image"],
            "{ctx}: the CUDA image is tagged apart from the CPU one"
        );

        // The CUDA build: FEATURES=cuda selects the stages and the cargo
        // feature (checked above), and a compute capability is passed on.
        let args = &service["build"]["args"];
        assert_eq!(compose_default(&args["FEATURES"]), "cuda", "{ctx}");
        assert!(
            !args["CUDA_COMPUTE_CAP"].is_badvalue(),
            "{ctx}: passes CUDA_COMPUTE_CAP"
        );

        let device = compose_default(&service["environment"]["FERROSEEK_DEVICE"]);
        assert!(
            device.starts_with("cuda"),
            "{ctx}: FERROSEEK_DEVICE={device}"
        );
        assert!(
            server_accepts_device(&device),
            "{ctx}: the server takes FERROSEEK_DEVICE={device}"
        );

        let devices = service["deploy"]["resources"]["reservations"]["devices"]
            .as_vec()
            .unwrap_or_else(|| panic!("{ctx}: reserves devices"));
        let gpu = devices.iter().find(|d| {
            d["driver"].as_str() == Some("nvidia")
                && d["capabilities"]
                    .as_vec()
                    .is_some_and(|c| c.iter().any(|c| c.as_str() == Some("gpu")))
        });
        let gpu = gpu.unwrap_or_else(|| panic!("{ctx}: reserves an nvidia device with `gpu`"));
        let count = compose_default(&gpu["count"]);
        assert!(
            count == "all" || count.parse::<u32>().is_ok_and(|n| n >= 1),
            "{ctx}: reserves at least one GPU, not `{count}`"
        );
    }
}

#[test]
fn the_device_check_tells_accepted_from_refused() {
    assert!(server_accepts_device("cpu"));
    assert!(!server_accepts_device("gpu"));
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
