//! Sampling defaults from the model's `generation_config.json`, as vLLM
//! applies them: a request field left out takes the model's value when the
//! file sets one (DeepSeek-V3 and R1 ship `temperature: 0.6, top_p: 0.95`),
//! else the OpenAI default. Only keys present in the file count
//! (transformers' implicit ones, such as `top_k: 50`, do not), and
//! `do_sample` is not looked at: a request asks for greedy decoding with
//! `temperature: 0`.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use ferroseek_engine::SamplingParams;
use serde_json::Value;

use ferroseek_engine::validate::{Allowed, MIN_P, REPETITION_PENALTY, TEMPERATURE, TOP_P};

/// The defaults `file` sets (none without a file), and a `key=value` per
/// value taken, for the log.
pub fn from_file(file: Option<&Path>) -> Result<(SamplingParams, Vec<String>)> {
    let mut params = SamplingParams::default();
    let Some(file) = file else {
        return Ok((params, Vec::new()));
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let mut taken = Vec::new();
    // The value of `key` when the file sets it, checked as a request's is.
    let mut number = |key: &str, allowed: &Allowed| -> Result<Option<f32>> {
        let Some(v) = json.get(key).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let x = v
            .as_f64()
            .ok_or_else(|| format!("`{key}` must be {}, got {v}", allowed.rule))
            .and_then(|x| allowed.check(key, x).map(|_| x).map_err(|e| e.message))
            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        taken.push(format!("{key}={x}"));
        Ok(Some(x as f32))
    };
    for (key, allowed, dst) in [
        ("temperature", &TEMPERATURE, &mut params.temperature),
        ("top_p", &TOP_P, &mut params.top_p),
        ("min_p", &MIN_P, &mut params.min_p),
        (
            "repetition_penalty",
            &REPETITION_PENALTY,
            &mut params.repetition_penalty,
        ),
    ] {
        if let Some(x) = number(key, allowed)? {
            *dst = x;
        }
    }
    const TOP_K: Allowed = Allowed {
        ok: |x| x >= 0.0 && x.fract() == 0.0,
        rule: "a whole number >= 0",
    };
    if let Some(k) = number("top_k", &TOP_K)? {
        // 0 keeps every token, as in a request.
        params.top_k = (k >= 1.0).then_some(k as usize);
    }
    Ok((params, taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(SamplingParams, Vec<String>)> {
        let dir = std::env::temp_dir().join(format!(
            "ferroseek-genconfig-{}-{}",
            std::process::id(),
            json.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("generation_config.json");
        std::fs::write(&file, json).unwrap();
        let out = from_file(Some(&file));
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    #[test]
    fn present_keys_become_defaults_and_the_rest_stay_openai_defaults() {
        let (p, taken) = parse(
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.95, "top_k": 0,
                "bos_token_id": 0, "eos_token_id": 1}"#,
        )
        .unwrap();
        assert_eq!(p.temperature, 0.6);
        assert_eq!(p.top_p, 0.95);
        assert_eq!(p.top_k, None);
        assert_eq!(p.min_p, 0.0);
        assert_eq!(p.repetition_penalty, 1.0);
        assert_eq!(taken, ["temperature=0.6", "top_p=0.95", "top_k=0"]);

        let (p, taken) = parse(r#"{"eos_token_id": 1, "top_k": 40}"#).unwrap();
        assert_eq!(p.temperature, 1.0);
        assert_eq!(p.top_k, Some(40));
        assert_eq!(taken, ["top_k=40"]);

        let (p, taken) = from_file(None).unwrap();
        assert_eq!(p, SamplingParams::default());
        assert!(taken.is_empty());
    }

    #[test]
    fn bad_values_name_the_file_and_the_key() {
        for (json, key) in [
            (r#"{"temperature": -1}"#, "`temperature`"),
            (r#"{"top_p": 0}"#, "`top_p`"),
            (r#"{"top_k": 2.5}"#, "`top_k`"),
            (r#"{"repetition_penalty": "high"}"#, "`repetition_penalty`"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(
                e.contains("generation_config.json") && e.contains(key),
                "{e}"
            );
        }
        let e = parse("{not json").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
