//! config.json: both layouts parse to the same math, and every value this
//! implementation does not support is an error naming the field and value.

mod common;

use common::fixture_dir;
use ferroseek_model::config::{Arch, ScoringFunc, TopkMethod};
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

/// The GLM-4.7-Flash fixture's config (GLM's own keys), edited.
fn glm(edit: Value) -> Result<DeepSeekConfig, String> {
    let text = std::fs::read_to_string(fixture_dir("glm4_moe_lite").join("config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    for (k, x) in edit.as_object().unwrap() {
        v[k] = x.clone();
    }
    parse(&v)
}

fn moe_layers(cfg: &DeepSeekConfig) -> Vec<usize> {
    (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.is_moe_layer(l))
        .collect()
}

#[test]
fn glm4_moe_lite_routes_like_v3_with_the_first_layer_dense() {
    let cfg = glm(json!({})).unwrap();
    assert_eq!(
        (cfg.arch, cfg.model_type.as_str()),
        (Arch::V3, "glm4_moe_lite")
    );
    let moe = cfg.moe.as_ref().unwrap();
    // No `scoring_func` in GLM's file: transformers' router is always sigmoid.
    assert_eq!(moe.scoring_func, ScoringFunc::Sigmoid);
    assert_eq!(moe.topk_method, TopkMethod::NoauxTc);
    assert_eq!(moe_layers(&cfg), [1, 2]);
    assert_eq!(cfg.eos_token_ids, [1, 2, 3]);
    // transformers' default when first_k_dense_replace is absent too.
    let absent = json!({"first_k_dense_replace": null});
    assert_eq!(moe_layers(&glm(absent).unwrap()), [1, 2]);
    let by_architecture = json!({"model_type": null, "architectures": ["Glm4MoeLiteForCausalLM"]});
    assert_eq!(glm(by_architecture).unwrap().model_type, "glm4_moe_lite");
}

#[test]
fn glm4_moe_lite_takes_its_moe_layers_from_mlp_layer_types() {
    let edit = json!({"mlp_layer_types": ["dense", "dense", "sparse"], "first_k_dense_replace": 2});
    assert_eq!(moe_layers(&glm(edit).unwrap()), [2]);
    let edit =
        json!({"mlp_layer_types": ["sparse", "sparse", "sparse"], "first_k_dense_replace": null});
    assert_eq!(moe_layers(&glm(edit).unwrap()), [0, 1, 2]);
}

#[test]
fn glm4_moe_lite_values_it_cannot_follow_are_named() {
    let cases = [
        (
            json!({"mlp_layer_types": ["dense", "sparse", "dense"]}),
            "mlp_layer_types",
        ),
        (
            json!({"mlp_layer_types": ["dense", "sparse"]}),
            "2 entries for 3 layers",
        ),
        (
            json!({"mlp_layer_types": ["dense", "moe", "sparse"]}),
            "`moe`",
        ),
        // transformers reads mlp_layer_types (default: 1 dense), vLLM this.
        (json!({"first_k_dense_replace": 2}), "first_k_dense_replace"),
        (json!({"moe_layer_freq": 2}), "moe_layer_freq"),
        (
            json!({"partial_rotary_factor": 0.5}),
            "partial_rotary_factor",
        ),
        (json!({"rope_interleave": false}), "rope_interleave"),
    ];
    for (edit, needle) in cases {
        let err = glm(edit.clone()).expect_err(&format!("{edit} must be refused"));
        assert!(
            err.contains(needle),
            "{edit}: {err:?} does not name {needle:?}"
        );
    }
    assert!(glm(json!({"rope_interleave": true})).is_ok());
}
