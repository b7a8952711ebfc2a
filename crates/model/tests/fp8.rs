//! DeepSeek-V3's FP8 checkpoints: linear weights stored as float8 e4m3 with
//! one `weight_scale_inv` per `[block_rows, block_cols]` block. A fixture
//! is quantized here (blocks that do not divide the shapes included); the
//! FP8 folder must load to exactly the model of its dequantized weights.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use ferroseek_model::{
    resolve_model, Batch, DTypeChoice, DeepSeekModel, HubOptions, LatentCache, LoadOptions,
    LogitsRows, SeqInput,
};

const BLOCK: [usize; 2] = [16, 24];
const E4M3_MAX: f32 = 448.0;

fn quantized(name: &str) -> bool {
    name.ends_with("_proj.weight") || name.ends_with("_proj_with_mqa.weight")
}

/// (fp8 weight, scale_inv, dequantized f32 weight)
fn quantize(w: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (rows, cols) = w.dims2().unwrap();
    let v: Vec<Vec<f32>> = w.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    let (sr, sc) = (rows.div_ceil(BLOCK[0]), cols.div_ceil(BLOCK[1]));
    let mut scale = vec![vec![1f32; sc]; sr];
    for (bi, row) in scale.iter_mut().enumerate() {
        for (bj, s) in row.iter_mut().enumerate() {
            let cols_of_block = bj * BLOCK[1]..((bj + 1) * BLOCK[1]).min(cols);
            let m = v[bi * BLOCK[0]..((bi + 1) * BLOCK[0]).min(rows)]
                .iter()
                .flat_map(|row| row[cols_of_block.clone()].iter())
                .fold(0f32, |m, x| m.max(x.abs()));
            if m > 0.0 {
                *s = m / E4M3_MAX;
            }
        }
    }
    let scaled: Vec<f32> = (0..rows * cols)
        .map(|i| v[i / cols][i % cols] / scale[i / cols / BLOCK[0]][i % cols / BLOCK[1]])
        .collect();
    let q = Tensor::from_vec(scaled, (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F8E4M3)
        .unwrap();
    let back: Vec<f32> = q
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let deq: Vec<f32> = back
        .iter()
        .enumerate()
        .map(|(i, x)| x * scale[i / cols / BLOCK[0]][i % cols / BLOCK[1]])
        .collect();
    let scale = Tensor::new(scale, &Device::Cpu).unwrap();
    (
        q,
        scale,
        Tensor::from_vec(deq, (rows, cols), &Device::Cpu).unwrap(),
    )
}

fn write(dir: &Path, config: &serde_json::Value, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn load(dir: &Path) -> ferroseek_model::Result<DeepSeekModel> {
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None))?;
    DeepSeekModel::load(
        &files,
        &LoadOptions {
            dtype: DTypeChoice::F32,
            ..Default::default()
        },
    )
}

fn logits(model: &DeepSeekModel) -> Tensor {
    let tokens: Vec<u32> = (0..11).map(|i| (i * 37 % 250) as u32).collect();
    let mut cache = LatentCache::new(model.config(), 4, 4).unwrap();
    let batch = Batch {
        seqs: vec![SeqInput {
            tokens,
            num_cached: 0,
            block_table: vec![0, 1, 2],
            logits: LogitsRows::All,
        }],
    };
    model.forward(&batch, &mut cache).unwrap()
}

struct Folders {
    _tmp: TempDir,
    fp8: std::path::PathBuf,
    dequantized: std::path::PathBuf,
    config: serde_json::Value,
    fp8_tensors: HashMap<String, Tensor>,
}

/// A scratch folder removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn folders(tag: &str) -> Folders {
    let src = fixture_dir("v3_noaux_yarn");
    let original =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut fp8 = HashMap::new();
    let mut deq = HashMap::new();
    for (name, t) in &original {
        if quantized(name) {
            let (q, s, d) = quantize(t);
            fp8.insert(name.clone(), q);
            fp8.insert(format!("{name}_scale_inv"), s);
            deq.insert(name.clone(), d);
        } else {
            fp8.insert(name.clone(), t.clone());
            deq.insert(name.clone(), t.clone());
        }
    }
    let tmp = std::env::temp_dir().join(format!("ferroseek-fp8-{tag}-{}", std::process::id()));
    let (fp8_dir, deq_dir) = (tmp.join("fp8"), tmp.join("dequantized"));
    write(&deq_dir, &config, &deq);
    config["quantization_config"] = serde_json::json!({
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": BLOCK,
    });
    write(&fp8_dir, &config, &fp8);
    Folders {
        _tmp: TempDir(tmp),
        fp8: fp8_dir,
        dequantized: deq_dir,
        config,
        fp8_tensors: fp8,
    }
}

#[test]
fn fp8_checkpoint_loads_as_its_dequantized_weights() {
    let f = folders("load");
    let from_fp8 = logits(&load(&f.fp8).unwrap());
    let from_f32 = logits(&load(&f.dequantized).unwrap());
    assert!(max_abs_diff(&from_fp8, &from_f32) < 1e-5);
    // Quantization really happened: the original weights give other logits.
    let original = logits(&common::load("v3_noaux_yarn", DTypeChoice::F32));
    assert!(max_abs_diff(&original, &from_fp8) > 1e-4);
}

#[test]
fn fp8_errors_name_what_is_wrong() {
    let f = folders("errors");
    // A missing scale.
    let name = "model.layers.0.self_attn.o_proj.weight_scale_inv";
    let mut tensors = f.fp8_tensors.clone();
    tensors.remove(name).unwrap();
    write(&f.fp8, &f.config, &tensors);
    let err = load(&f.fp8)
        .err()
        .expect("a missing scale fails")
        .to_string();
    assert!(err.contains(name), "{err}");
    // A scale of the wrong shape.
    tensors.insert(
        name.into(),
        Tensor::ones((1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    write(&f.fp8, &f.config, &tensors);
    let err = load(&f.fp8)
        .err()
        .expect("a mis-shaped scale fails")
        .to_string();
    assert!(err.contains(name) && err.contains("[1, 1]"), "{err}");
    // FP8 tensors without a quantization_config.
    let mut config = f.config.clone();
    config
        .as_object_mut()
        .unwrap()
        .remove("quantization_config");
    write(&f.fp8, &config, &f.fp8_tensors);
    let err = load(&f.fp8)
        .err()
        .expect("fp8 without a config fails")
        .to_string();
    assert!(err.contains("quantization_config"), "{err}");
}
