//! config.json: both layouts parse to the same math, and every value this
//! implementation does not support is an error naming the field and value.

mod common;

use common::fixture_dir;
use ferroseek_model::DeepSeekConfig;
use serde_json::{json, Value};

fn base() -> Value {
    let text = std::fs::read_to_string(fixture_dir("v3_noaux_yarn").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn parse(v: &Value) -> Result<DeepSeekConfig, String> {
    DeepSeekConfig::from_json(&v.to_string()).map_err(|e| e.to_string())
}

/// The error of `base()` changed by `edit`; it must name every `needle`.
fn error_of(edit: impl FnOnce(&mut Value), needles: &[&str]) {
    let mut v = base();
    edit(&mut v);
    let err = parse(&v).expect_err("the edited config must be refused");
    for n in needles {
        assert!(err.contains(n), "error {err:?} does not name {n:?}");
    }
}

#[test]
fn unsupported_values_are_named() {
    error_of(
        |v| v["topk_method"] = json!("bogus"),
        &["topk_method", "bogus"],
    );
    error_of(
        |v| v["scoring_func"] = json!("relu"),
        &["scoring_func", "relu"],
    );
    error_of(
        |v| v["rope_scaling"]["type"] = json!("dynamic"),
        &["rope_scaling", "dynamic"],
    );
    error_of(
        |v| v["quantization_config"] = json!({"quant_method": "gptq"}),
        &["quant_method", "gptq"],
    );
    error_of(|v| v["attention_bias"] = json!(true), &["attention_bias"]);
    error_of(
        |v| v["num_key_value_heads"] = json!(1),
        &["num_key_value_heads"],
    );
    error_of(|v| v["hidden_act"] = json!("gelu"), &["hidden_act", "gelu"]);
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    error_of(
        |v| {
            v.as_object_mut().unwrap().remove("hidden_size");
        },
        &["hidden_size"],
    );
    error_of(|v| v["kv_lora_rank"] = json!("big"), &["kv_lora_rank"]);
    error_of(|v| v["model_type"] = json!("llama"), &["llama"]);
}

#[test]
fn transformers_5_layout_reads_like_the_hub_layout() {
    let hub = base();
    let mut t5 = hub.clone();
    let obj = t5.as_object_mut().unwrap();
    let mut rope = obj.remove("rope_scaling").unwrap();
    rope["rope_type"] = rope["type"].clone();
    rope.as_object_mut().unwrap().remove("type");
    rope["rope_theta"] = obj.remove("rope_theta").unwrap();
    obj.insert("rope_parameters".into(), rope);
    // transformers 5 writes a head_dim that is not the attention head size.
    obj.insert("head_dim".into(), json!(8));
    let (a, b) = (parse(&hub).unwrap(), parse(&t5).unwrap());
    assert_eq!(a.yarn, b.yarn);
    assert_eq!(a.rope_theta, b.rope_theta);
    assert_eq!(a.softmax_scale(), b.softmax_scale());
    assert_eq!(a.qk_nope_head_dim + a.qk_rope_head_dim, 24);
    assert_eq!(b.qk_nope_head_dim + b.qk_rope_head_dim, 24);
}
