//! Reading GGUF tensors of each supported type, split sets, and the Q8_0
//! round trip the loader relies on; on files written with candle's GGUF
//! writer.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};

use super::{split_files, split_name, GgufCheckpoint};
use crate::error::ModelError;

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

fn temp_dir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("ferroseek-gguf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn write(path: &Path, metadata: &[(&str, Value)], tensors: &[(&str, QTensor)]) {
    let mut file = std::fs::File::create(path).unwrap();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

fn ramp(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .affine(0.37, -3.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(dims)
        .unwrap()
}

/// `t` in storage of its own: candle's quantizer reads a view's storage
/// from its start.
fn fresh(t: &Tensor) -> Tensor {
    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    Tensor::from_vec(values, t.dims(), t.device()).unwrap()
}

fn q(t: &Tensor, ggml: GgmlDType) -> QTensor {
    QTensor::quantize(t, ggml).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            == b.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
}

#[test]
fn split_names_are_recognised() {
    assert_eq!(split_name("m-00001-of-00003.gguf"), Some(("m", 1, 3)));
    assert_eq!(split_name("a-b-00002-of-00002.gguf"), Some(("a-b", 2, 2)));
    assert_eq!(split_name("m-1-of-3.gguf"), None);
    assert_eq!(split_name("m-00004-of-00003.gguf"), None);
    assert_eq!(split_name("m.gguf"), None);
}

#[test]
fn each_stored_type_reads_back_in_pytorch_shape() {
    let dir = temp_dir("types");
    let (w, experts) = (ramp(&[4, 64]), ramp(&[3, 2, 32]));
    let path = dir.join("types.gguf");
    write(
        &path,
        &[],
        &[
            ("f32", q(&w, GgmlDType::F32)),
            ("f16", q(&w, GgmlDType::F16)),
            ("bf16", q(&w, GgmlDType::BF16)),
            ("q8_0", q(&w, GgmlDType::Q8_0)),
            ("q4_k", q(&ramp(&[2, 256]), GgmlDType::Q4K)),
            ("q6_k", q(&ramp(&[2, 256]), GgmlDType::Q6K)),
            ("q8_k", q(&ramp(&[2, 256]), GgmlDType::Q8K)),
            ("blk.0.ffn_up_exps.weight", q(&experts, GgmlDType::Q8_0)),
        ],
    );
    let g = GgufCheckpoint::open(std::slice::from_ref(&path)).unwrap();
    assert!(same(&g.read("f32", None).unwrap(), &w));
    assert_eq!(g.read("f16", None).unwrap().dtype(), DType::F16);
    assert!(same(
        &g.read("f16", None).unwrap(),
        &w.to_dtype(DType::F16).unwrap()
    ));
    assert!(same(
        &g.read("bf16", None).unwrap(),
        &w.to_dtype(DType::BF16).unwrap()
    ));
    let rounded = q(&w, GgmlDType::Q8_0).dequantize(&Device::Cpu).unwrap();
    assert!(same(&g.read("q8_0", None).unwrap(), &rounded));
    // One expert of a stacked tensor: its own rows, by the HF name.
    let expert = q(&experts, GgmlDType::Q8_0)
        .dequantize(&Device::Cpu)
        .unwrap()
        .i(2)
        .unwrap();
    let by_name = g
        .load("model.layers.0.mlp.experts.2.up_proj.weight")
        .unwrap();
    assert!(same(&by_name, &expert));
    assert!(matches!(
        g.load("model.layers.0.mlp.experts.3.up_proj.weight"),
        Err(ModelError::MissingTensor { .. })
    ));
    for (name, ggml) in [("q4_k", GgmlDType::Q4K), ("q6_k", GgmlDType::Q6K)] {
        let decoded = q(&ramp(&[2, 256]), ggml).dequantize(&Device::Cpu).unwrap();
        assert!(same(&g.read(name, None).unwrap(), &decoded), "{name}");
    }
    let err = g.read("q8_k", None).unwrap_err().to_string();
    assert!(
        err.contains("`q8_k`") && err.contains("not supported yet"),
        "{err}"
    );
}

/// The loader hands Q8_0 weights to the model dequantized; the model's
/// own Q8_0 rounding must give back the file's blocks, byte for byte.
#[test]
fn q8_0_file_blocks_survive_requantizing() {
    let w = (ramp(&[64, 256]) * 3.7).unwrap();
    let blocks = q(&w, GgmlDType::Q8_0);
    let again = q(&blocks.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q8_0);
    assert_eq!(blocks.data().unwrap(), again.data().unwrap());
}

#[test]
fn split_kv_b_rebuilds_hf_kv_b_proj() {
    let (heads, nope, v, rank) = (2, 32, 32, 64);
    let kv_b = ramp(&[heads * (nope + v), rank]);
    let per_head = kv_b.reshape((heads, nope + v, rank)).unwrap();
    let k_b = per_head
        .narrow(1, 0, nope)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    let v_b = per_head.narrow(1, nope, v).unwrap().contiguous().unwrap();
    let dir = temp_dir("kvb");
    let path = dir.join("kvb.gguf");
    write(
        &path,
        &[],
        &[
            ("blk.0.attn_k_b.weight", q(&k_b, GgmlDType::F32)),
            ("blk.0.attn_v_b.weight", q(&v_b, GgmlDType::F32)),
        ],
    );
    let g = GgufCheckpoint::open(&[path]).unwrap();
    let rebuilt = g.load("model.layers.0.self_attn.kv_b_proj.weight").unwrap();
    assert!(same(&rebuilt, &kv_b));
}

/// The split halves are also offered as they are, as MLA's per-head
/// matrices `w_uk` (`[heads, rank, nope]`) and `w_uv` (`[heads, v,
/// rank]`), and a quantized model holds each head from the stored blocks:
/// the file's numbers exactly, at their own bits (Q5_0 and Q4_K here;
/// where the CPU lacks the packed kernels they are decoded and rounded to
/// Q8_0 instead).
#[test]
fn split_per_head_matrices_keep_their_stored_blocks() {
    use crate::kernels::packed::Packed;
    use crate::layers::linear::{GroupedLinear, WeightFormat};
    use crate::quant::Quantization;

    let (heads, nope, v, rank) = (4, 32, 32, 256);
    let k_b = ramp(&[heads, rank, nope]);
    let v_b = (ramp(&[heads, v, rank]) * 0.5).unwrap();
    let dir = temp_dir("kvb-blocks");
    let path = dir.join("kvb.gguf");
    let (k_q, v_q) = (q(&k_b, GgmlDType::Q5_0), q(&v_b, GgmlDType::Q4K));
    let stored = |t: &QTensor| t.dequantize(&Device::Cpu).unwrap();
    let (k_numbers, v_numbers) = (stored(&k_q), stored(&v_q));
    write(
        &path,
        &[],
        &[
            ("blk.0.attn_k_b.weight", k_q),
            ("blk.0.attn_v_b.weight", v_q),
        ],
    );
    let g = GgufCheckpoint::open(&[path]).unwrap();
    let vb = g.var_builder(DType::F32, &Device::Cpu);
    let vb = vb.pp("model.layers.0.self_attn");
    assert!(vb.contains_tensor("w_uk.weight") && vb.contains_tensor("w_uv.weight"));
    let format = WeightFormat {
        dtype: DType::F32,
        quantize: Quantization::Q8_0,
    };
    for (name, dims, numbers, held) in [
        ("w_uk", (heads, rank, nope), &k_numbers, "q5_0"),
        ("w_uv", (heads, v, rank), &v_numbers, "q4k"),
    ] {
        let grouped = GroupedLinear::load(dims, vb.pp(name), format).unwrap();
        let dense = grouped.dense(DType::F32).unwrap();
        if Packed::available() {
            assert_eq!(grouped.format(), held, "{name}");
            assert!(same(&dense, numbers), "{name}: not the stored numbers");
        } else {
            assert_eq!(grouped.format(), "q8_0", "{name}");
            assert!(relative_error(&dense, numbers) < 0.01, "{name}");
        }
    }
}

#[test]
fn split_sets_open_from_the_first_file() {
    let dir = temp_dir("split");
    let (a, b) = (ramp(&[2, 32]), ramp(&[3, 32]));
    let split = |no: u16| {
        vec![
            ("split.no", Value::U16(no)),
            ("split.count", Value::U16(2)),
            ("split.tensors.count", Value::I32(2)),
        ]
    };
    let first = dir.join("m-00001-of-00002.gguf");
    write(
        &first,
        &split(0),
        &[("token_embd.weight", q(&a, GgmlDType::F32))],
    );
    write(
        &dir.join("m-00002-of-00002.gguf"),
        &split(1),
        &[("output.weight", q(&b, GgmlDType::F32))],
    );
    let files = split_files(&first).unwrap();
    assert_eq!(files.len(), 2);
    let g = GgufCheckpoint::open(&files).unwrap();
    assert!(same(&g.load("lm_head.weight").unwrap(), &b));
    assert!(same(&g.load("model.embed_tokens.weight").unwrap(), &a));

    let err = split_files(&dir.join("m-00002-of-00002.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("give the first"), "{err}");
    // The first file alone (renamed, say) is one of a set of 2.
    let err = GgufCheckpoint::open(&files[..1])
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("`split.count`")),
        "{err:?}"
    );
    // The second file first claims to be part 1 of a set of 2.
    let reversed = GgufCheckpoint::open(&[files[1].clone(), files[0].clone()]);
    assert!(reversed.is_err());
    std::fs::remove_file(&files[1]).unwrap();
    let err = split_files(&first).unwrap_err().to_string();
    assert!(err.contains("is missing"), "{err}");
}

/// A Q8_0 weight reaches a Q8_0 linear layer as the file's blocks (one
/// expert of a stacked tensor too); an F32 weight does not offer blocks.
#[test]
fn q8_0_weights_reach_linear_layers_as_stored_blocks() {
    use crate::layers::linear::{Linear, WeightFormat, STORED_BLOCKS};
    use crate::quant::Quantization;
    use candle_core::Module;
    use candle_nn::var_builder::SimpleBackend;

    let dir = temp_dir("blocks");
    let path = dir.join("blocks.gguf");
    let (o, experts) = ((ramp(&[32, 64]) * 2.5).unwrap(), ramp(&[2, 32, 64]));
    write(
        &path,
        &[],
        &[
            ("blk.0.attn_output.weight", q(&o, GgmlDType::Q8_0)),
            ("blk.0.ffn_up_exps.weight", q(&experts, GgmlDType::Q8_0)),
            ("blk.0.attn_q.weight", q(&o, GgmlDType::F32)),
        ],
    );
    let g = GgufCheckpoint::open(&[path]).unwrap();
    let blocks = |w: &str| {
        format!(
            "{}{}",
            w,
            STORED_BLOCKS[0].1.strip_prefix("weight").unwrap()
        )
    };
    let o_name = "model.layers.0.self_attn.o_proj.weight";
    let up_name = "model.layers.0.mlp.experts.1.up_proj.weight";
    assert!(g.contains_tensor(&blocks(o_name)));
    assert!(g.contains_tensor(&blocks(up_name)));
    assert!(!g.contains_tensor(&blocks("model.layers.0.self_attn.q_proj.weight")));
    let stored = g.load(&blocks(o_name)).unwrap();
    assert_eq!(stored.dims(), [32, 64 / 32 * 34]);
    assert_eq!(
        stored.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        q(&o, GgmlDType::Q8_0).data().unwrap().to_vec()
    );

    let format = WeightFormat {
        dtype: DType::F32,
        quantize: Quantization::Q8_0,
    };
    let vb = g.var_builder(DType::F32, &Device::Cpu);
    let x = ramp(&[3, 64]);
    for (name, prefix, weight) in [
        (o_name, "model.layers.0.self_attn.o_proj", o.clone()),
        (
            up_name,
            "model.layers.0.mlp.experts.1.up_proj",
            fresh(&experts.i(1).unwrap()),
        ),
    ] {
        let from_blocks = Linear::load(64, 32, vb.pp(prefix), format).unwrap();
        let rounded = q(&weight, GgmlDType::Q8_0)
            .dequantize(&Device::Cpu)
            .unwrap();
        let requantized = Linear::from_tensor(&rounded, format).unwrap();
        assert_ne!(from_blocks.format(), "f32", "{name}");
        assert!(
            same(
                &from_blocks.forward(&x).unwrap(),
                &requantized.forward(&x).unwrap()
            ),
            "{name}"
        );
    }
}

/// The embedded model's q8_0 GGUF rewritten with `edit` applied to its
/// metadata (and only its embedding table), then its config.
fn config_with(
    name: &str,
    edit: impl Fn(&mut Vec<(String, Value)>),
) -> crate::error::Result<crate::config::DeepSeekConfig> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf/tiny-deepseek-v3-q8_0.gguf");
    let mut file = std::fs::File::open(&fixture).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let embed = content
        .tensor(&mut file, "token_embd.weight", &Device::Cpu)
        .unwrap();
    let mut metadata: Vec<(String, Value)> = content.metadata.into_iter().collect();
    edit(&mut metadata);
    let dir = temp_dir(&format!("config-{name}"));
    let path = dir.join(format!("{name}.gguf"));
    let metadata: Vec<(&str, Value)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    write(&path, &metadata, &[("token_embd.weight", embed)]);
    GgufCheckpoint::open(&[path])?.config()
}

#[test]
fn missing_or_unsupported_metadata_is_an_error_naming_the_key() {
    for key in [
        "deepseek2.block_count",
        "deepseek2.attention.kv_lora_rank",
        "deepseek2.attention.layer_norm_rms_epsilon",
        "deepseek2.expert_feed_forward_length",
        "deepseek2.expert_shared_count",
        "deepseek2.rope.scaling.original_context_length",
        "general.architecture",
    ] {
        let err = config_with(key, |m| m.retain(|(k, _)| k != key))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{key}` is missing")), "{key}: {err}");
    }
    let set = |key: &'static str, value: Value| {
        move |m: &mut Vec<(String, Value)>| {
            m.retain(|(k, _)| k != key);
            m.push((key.to_string(), value.clone()));
        }
    };
    let err = config_with(
        "llama",
        set("general.architecture", Value::String("llama".into())),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("only `deepseek2` is supported"), "{err}");
    let err = config_with("gating", set("deepseek2.expert_gating_func", Value::U32(4)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`deepseek2.expert_gating_func` is 4"), "{err}");
    let per_layer = Value::Array(vec![Value::U32(256); 4]);
    let err = config_with("array", set("deepseek2.feed_forward_length", per_layer))
        .unwrap_err()
        .to_string();
    assert!(err.contains("per-layer array"), "{err}");
    let err = config_with(
        "all-nextn",
        set("deepseek2.nextn_predict_layers", Value::U32(4)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`deepseek2.nextn_predict_layers` is 4, which leaves none of the 4 blocks"),
        "{err}"
    );
    // The file as written passes.
    assert!(config_with("whole", |_| {}).is_ok());
}

/// A file that keeps multi-token-prediction blocks after the model's
/// layers (as llama.cpp's converter writes GLM-4.7-Flash) counts them in
/// `block_count` and says how many in `nextn_predict_layers`: the model
/// has the others.
#[test]
fn multi_token_prediction_blocks_are_not_model_layers() {
    let whole = config_with("no-nextn", |_| {}).unwrap();
    let with_mtp = config_with("nextn", |m| {
        for (k, v) in m.iter_mut() {
            if k == "deepseek2.block_count" {
                *v = Value::U32(whole.num_hidden_layers as u32 + 1);
            }
        }
        m.push(("deepseek2.nextn_predict_layers".into(), Value::U32(1)));
    })
    .unwrap();
    assert_eq!(with_mtp, whole);
}

/// Relative distance of `a` from `b`: |a - b| / |b| over all elements.
fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

/// Under a Q8_0 model, a weight stored in a format the kernels run keeps
/// its blocks (packed where the CPU has the kernels, candle's own blocks
/// elsewhere for the formats candle runs fast): Q4_K, Q5_K, Q6_K, Q5_0,
/// Q4_0, Q5_1, Q3_K and Q2_K here; the others are decoded and rounded to
/// Q8_0. Each computes what its stored numbers say, up to the rounding of
/// the activations (and, rounded to Q8_0, of its numbers).
#[test]
fn stored_blocks_are_kept_and_other_types_are_requantized() {
    use crate::kernels::packed::Packed;
    use crate::layers::linear::{runs_as_stored, Linear, WeightFormat, STORED_BLOCKS};
    use crate::quant::Quantization;
    use candle_core::Module;

    let dir = temp_dir("kquants");
    let path = dir.join("kquants.gguf");
    let (a, b) = (ramp(&[32, 256]), (ramp(&[48, 256]) * 0.3).unwrap());
    let (c, d) = (
        (ramp(&[64, 256]) * 0.7).unwrap(),
        (ramp(&[16, 256]) * 2.0).unwrap(),
    );
    let e = (ramp(&[32, 256]) * 0.5).unwrap();
    let f = (ramp(&[48, 256]) * 1.5).unwrap();
    let h = (ramp(&[32, 256]) * 0.8).unwrap();
    let i = (ramp(&[16, 256]) * 0.6).unwrap();
    write(
        &path,
        &[],
        &[
            ("blk.0.attn_output.weight", q(&a, GgmlDType::Q4K)),
            ("blk.0.ffn_down.weight", q(&b, GgmlDType::Q6K)),
            ("blk.0.ffn_gate.weight", q(&c, GgmlDType::Q5_0)),
            ("blk.0.ffn_up.weight", q(&d, GgmlDType::Q4_0)),
            ("blk.0.attn_q_a.weight", q(&e, GgmlDType::Q5_1)),
            ("blk.0.attn_kv_a_mqa.weight", q(&h, GgmlDType::Q3K)),
            ("blk.0.ffn_gate_shexp.weight", q(&i, GgmlDType::Q2K)),
            ("blk.0.attn_q_b.weight", q(&f, GgmlDType::Q5K)),
        ],
    );
    let g = GgufCheckpoint::open(&[path]).unwrap();
    let vb = g.var_builder(DType::F32, &Device::Cpu);
    let format = WeightFormat {
        dtype: DType::F32,
        quantize: Quantization::Q8_0,
    };
    // Relative error of the formats kept on the packed kernels: the
    // activations' 8-bit rounding alone (measured 1.3e-4 for each). candle's
    // K-quant kernels round the activations per 256.
    const KEPT: f32 = 2.5e-4;
    let packed = Packed::available();
    let x = ramp(&[5, 256]);
    for (prefix, w, ggml) in [
        ("model.layers.0.self_attn.o_proj", &a, GgmlDType::Q4K),
        ("model.layers.0.mlp.down_proj", &b, GgmlDType::Q6K),
        ("model.layers.0.self_attn.q_b_proj", &f, GgmlDType::Q5K),
        ("model.layers.0.mlp.gate_proj", &c, GgmlDType::Q5_0),
        ("model.layers.0.mlp.up_proj", &d, GgmlDType::Q4_0),
        ("model.layers.0.self_attn.q_a_proj", &e, GgmlDType::Q5_1),
        (
            "model.layers.0.self_attn.kv_a_proj_with_mqa",
            &h,
            GgmlDType::Q3K,
        ),
        (
            "model.layers.0.mlp.shared_experts.gate_proj",
            &i,
            GgmlDType::Q2K,
        ),
    ] {
        // Held as stored where it runs so (every stored format on the
        // packed kernels), else rounded to Q8_0.
        let offered = STORED_BLOCKS.iter().any(|(g, _)| *g == ggml);
        let stored = offered && runs_as_stored(ggml, packed);
        let (held, bound) = match (stored, packed) {
            (true, true) => (format!("{ggml:?}").to_lowercase(), KEPT),
            (true, false) => (format!("{ggml:?}").to_lowercase(), 0.01),
            (false, _) => ("q8_0".to_string(), 0.02),
        };
        let out = w.dim(0).unwrap();
        let linear = Linear::load(256, out, vb.pp(prefix), format).unwrap();
        assert_eq!(linear.format(), held, "{prefix}");
        let stored = q(w, ggml).dequantize(&Device::Cpu).unwrap();
        let dense = x.matmul(&stored.t().unwrap()).unwrap();
        let err = relative_error(&linear.forward(&x).unwrap(), &dense);
        assert!(err < bound, "{prefix}: relative error {err}");
    }
}

/// An MLP whose gate and up projections a file stores in two formats
/// (Q8_0 and Q4_K, its down projection in Q6_K) runs each as stored, on
/// the packed kernels where the CPU has them (gate and up are two weights
/// of one kernel call, so their formats need not agree), and computes
/// what the stored numbers say; beside an MLP held as linears (dense here)
/// the two kinds run together.
#[test]
fn an_mlp_in_mixed_formats_runs_each_as_stored() {
    use crate::layers::linear::{Linear, WeightFormat};
    use crate::layers::moe::Mlp;
    use crate::quant::Quantization;
    use candle_core::Module;

    let dir = temp_dir("mixed-mlp");
    let path = dir.join("mixed.gguf");
    let fill = |seed: usize, scale: f32| {
        let v: Vec<f32> = crate::testing::unit::values(256 * 256, seed)
            .iter()
            .map(|v| v * scale)
            .collect();
        Tensor::from_vec(v, (256, 256), &Device::Cpu).unwrap()
    };
    let (gate, up, down) = (fill(1, 0.1), fill(2, 0.1), fill(3, 0.1));
    let stored = [
        ("ffn_gate", &gate, GgmlDType::Q8_0),
        ("ffn_up", &up, GgmlDType::Q4K),
        ("ffn_down", &down, GgmlDType::Q6K),
    ];
    // Block 1 keeps one format throughout.
    let format_of = |block: usize, ggml: GgmlDType| if block == 1 { GgmlDType::Q8_0 } else { ggml };
    let names: Vec<String> = (0..2)
        .flat_map(|block| stored.map(|(name, _, _)| format!("blk.{block}.{name}.weight")))
        .collect();
    let tensors: Vec<(&str, QTensor)> = (0..2)
        .flat_map(|block| stored.map(|(_, w, ggml)| q(w, format_of(block, ggml))))
        .zip(&names)
        .map(|(t, name)| (name.as_str(), t))
        .collect();
    write(&path, &[], &tensors);
    let g = GgufCheckpoint::open(&[path]).unwrap();
    let vb = g.var_builder(DType::F32, &Device::Cpu);
    let format = WeightFormat {
        dtype: DType::F32,
        quantize: Quantization::Q8_0,
    };
    let mixed = Mlp::new(256, 256, vb.pp("model.layers.0.mlp"), format).unwrap();
    let uniform = Mlp::new(256, 256, vb.pp("model.layers.1.mlp"), format).unwrap();
    let available = crate::kernels::packed::Packed::available();
    assert_eq!(mixed.packed().is_some(), available);
    assert_eq!(uniform.packed().is_some(), available);
    let dense_mlp = Mlp::new(
        256,
        256,
        vb.pp("model.layers.1.mlp"),
        WeightFormat::dense(DType::F32),
    )
    .unwrap();
    assert!(dense_mlp.packed().is_none());
    let x = Tensor::from_vec(
        crate::testing::unit::values(3 * 256, 4),
        (3, 256),
        &Device::Cpu,
    )
    .unwrap();
    let dense = |block: usize| {
        let w = |i: usize| {
            let (_, t, ggml) = stored[i];
            q(t, format_of(block, ggml))
                .dequantize(&Device::Cpu)
                .unwrap()
        };
        let (g, u, d) = (w(0), w(1), w(2));
        let h = (candle_nn::ops::silu(&x.matmul(&g.t().unwrap()).unwrap()).unwrap()
            * x.matmul(&u.t().unwrap()).unwrap())
        .unwrap();
        h.matmul(&d.t().unwrap()).unwrap()
    };
    let apart = crate::testing::unit::max_abs_diff;
    for (mlp, block) in [(&mixed, 0), (&uniform, 1)] {
        // Exactly its three linears, each held as the file stores it.
        let l = |name: &str| {
            let vb = vb.pp(format!("model.layers.{block}.mlp.{name}"));
            Linear::load(256, 256, vb, format).unwrap()
        };
        let (g, u, d) = (l("gate_proj"), l("up_proj"), l("down_proj"));
        if block == 0 {
            assert_eq!([g.format(), u.format(), d.format()], ["q8_0", "q4k", "q6k"]);
        }
        let h = (candle_nn::ops::silu(&g.forward(&x).unwrap()).unwrap() * u.forward(&x).unwrap())
            .unwrap();
        let got = mlp.forward(&x).unwrap();
        assert_eq!(apart(&got, &d.forward(&h).unwrap()), 0.0, "block {block}");
        // And what the stored numbers say, up to the activations' 8-bit
        // rounding, which the down projection magnifies on these fills
        // (measured 0.026 for both blocks; each linear alone 3e-4).
        let err = relative_error(&got, &dense(block));
        assert!(err < 0.04, "block {block}: relative error {err}");
    }
    let kinds = [&mixed, &dense_mlp, &uniform, &dense_mlp];
    let together = Mlp::forward_shared(&kinds, &x).unwrap();
    for (got, mlp) in together.iter().zip(kinds) {
        assert_eq!(apart(got, &mlp.forward(&x).unwrap()), 0.0);
    }
}
