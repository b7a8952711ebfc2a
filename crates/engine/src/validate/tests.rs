use super::*;

const LIMITS: Limits = Limits {
    vocab_size: 100,
    max_num_seqs: 8,
    max_model_len: 256,
};

fn param_of(fields: SamplingFields) -> Option<String> {
    fields.validate(&LIMITS).err().map(|e| e.param)
}

/// The model's generation config fills the fields a request leaves
/// out, and only those.
#[test]
fn left_out_fields_take_the_model_defaults() {
    let model = SamplingParams {
        temperature: 0.6,
        top_p: 0.95,
        top_k: Some(20),
        ..Default::default()
    };
    let got = SamplingFields::default()
        .validate_with(&LIMITS, &model)
        .unwrap();
    assert_eq!(got.sampling(), &model);
    let got = SamplingFields {
        temperature: Some(0.0),
        top_p: Some(0.5),
        top_k: Some(-1),
        ..Default::default()
    }
    .validate_with(&LIMITS, &model)
    .unwrap();
    let got = got.sampling();
    assert_eq!((got.temperature, got.top_p, got.top_k), (0.0, 0.5, None));
}

#[test]
fn defaults_are_openai_defaults() {
    let v = SamplingFields::default().validate(&LIMITS).unwrap();
    assert_eq!(v.sampling(), &SamplingParams::default());
    assert_eq!(v.n(), 1);
    assert_eq!(v.stop().max_tokens, None);
    assert_eq!(v.logprobs(), None);
    assert!(v.skip_special_tokens());
}

#[test]
fn out_of_range_values_name_their_field() {
    let cases: Vec<(SamplingFields, &str)> = vec![
        (
            SamplingFields {
                temperature: Some(2.5),
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingFields {
                temperature: Some(-0.1),
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingFields {
                temperature: Some(f64::NAN),
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingFields {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingFields {
                min_p: Some(1.5),
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingFields {
                presence_penalty: Some(3.0),
                ..Default::default()
            },
            "presence_penalty",
        ),
        (
            SamplingFields {
                frequency_penalty: Some(-2.5),
                ..Default::default()
            },
            "frequency_penalty",
        ),
        (
            SamplingFields {
                repetition_penalty: Some(0.0),
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingFields {
                repetition_penalty: Some(10.5),
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingFields {
                top_k: Some(-2),
                ..Default::default()
            },
            "top_k",
        ),
        (
            SamplingFields {
                n: Some(0),
                ..Default::default()
            },
            "n",
        ),
        (
            SamplingFields {
                n: Some(9),
                ..Default::default()
            },
            "n",
        ),
        (
            SamplingFields {
                max_tokens: Some(("max_tokens", -1)),
                ..Default::default()
            },
            "max_tokens",
        ),
        (
            SamplingFields {
                max_tokens: Some(("max_completion_tokens", 257)),
                ..Default::default()
            },
            "max_completion_tokens",
        ),
        (
            SamplingFields {
                stop_token_ids: Some(&[5, 100]),
                ..Default::default()
            },
            "stop_token_ids[1]",
        ),
        (
            SamplingFields {
                logprobs: Some(("top_logprobs", 21)),
                ..Default::default()
            },
            "top_logprobs",
        ),
        (
            SamplingFields {
                logprobs: Some(("logprobs", -1)),
                ..Default::default()
            },
            "logprobs",
        ),
    ];
    for (fields, param) in cases {
        assert_eq!(param_of(fields).as_deref(), Some(param));
    }
}

#[test]
fn messages_name_the_field_and_the_rule() {
    let e = SamplingFields {
        top_p: Some(1.5),
        ..Default::default()
    }
    .validate(&LIMITS)
    .unwrap_err();
    assert_eq!(e.to_string(), "`top_p` must be in (0, 1], got 1.5");
}

#[test]
fn logit_bias_needs_ids_in_vocab_and_values_in_range() {
    let ok = BTreeMap::from([("5".to_string(), -100.0), ("7".to_string(), 3.5)]);
    let v = SamplingFields {
        logit_bias: Some(&ok),
        ..Default::default()
    }
    .validate(&LIMITS)
    .unwrap();
    assert_eq!(v.sampling().logit_bias, vec![(5, -100.0), (7, 3.5)]);
    for (key, value) in [("100", 1.0), ("x", 1.0), ("-1", 1.0), ("5", 100.5)] {
        let bad = BTreeMap::from([(key.to_string(), value)]);
        let fields = SamplingFields {
            logit_bias: Some(&bad),
            ..Default::default()
        };
        assert_eq!(
            param_of(fields).as_deref(),
            Some("logit_bias"),
            "{key}: {value}"
        );
    }
}

#[test]
fn stop_strings_are_limited() {
    let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    assert_eq!(
        param_of(SamplingFields {
            stop: Some(&many),
            ..Default::default()
        })
        .as_deref(),
        Some("stop")
    );
    let empty = [String::new()];
    assert!(SamplingFields {
        stop: Some(&empty),
        ..Default::default()
    }
    .validate(&LIMITS)
    .is_err());
    let one = ["\n\n".to_string()];
    let v = SamplingFields {
        stop: Some(&one),
        top_k: Some(-1),
        ..Default::default()
    }
    .validate(&LIMITS)
    .unwrap();
    assert_eq!(v.stop().stop_strings, ["\n\n"]);
    assert_eq!(v.sampling().top_k, None);
}

#[test]
fn logprobs_reach_the_request() {
    let v = SamplingFields {
        logprobs: Some(("logprobs", 2)),
        prompt_logprobs: Some(("logprobs", 3)),
        ..Default::default()
    }
    .validate(&LIMITS)
    .unwrap();
    let r = v.request("r", vec![1, 2]).unwrap();
    assert_eq!(
        (r.request().logprobs, r.request().prompt_logprobs),
        (Some(2), Some(3))
    );
    let e = SamplingFields {
        prompt_logprobs: Some(("prompt_logprobs", 21)),
        ..Default::default()
    }
    .validate(&LIMITS)
    .unwrap_err();
    assert_eq!(e.param, "prompt_logprobs");
}

#[test]
fn prompts_must_be_non_empty_and_in_the_vocabulary() {
    let v = SamplingFields::default().validate(&LIMITS).unwrap();
    let e = v.request("empty", Vec::new()).unwrap_err();
    assert_eq!(e.param, "prompt");
    let e = v.request("oov", vec![5, 100]).unwrap_err();
    assert_eq!(e.param, "prompt");
    assert!(e.message.contains("100"), "{e}");
    assert_eq!(
        v.request("ok", vec![0, 99]).unwrap().request().prompt,
        [0, 99]
    );
}
