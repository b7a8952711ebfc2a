//! A sharded checkpoint (`model.safetensors.index.json` naming several
//! `model-0000K-of-0000N.safetensors`, as every large hub repository ships
//! its weights) loads to the same model as the single file: the embedded
//! default model is cut into three shards here and both give the same logits.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use ferroseek_model::{
    resolve_model, Batch, DeepSeekModel, HubOptions, LoadOptions, LogitsRows, SeqInput,
};
use safetensors::SafeTensors;

const SHARDS: usize = 3;

fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-deepseek-v3")
}

/// A temporary model folder, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the default model's tensors, in name order, as `SHARDS` files of
/// about equal count, with an index naming each tensor's shard.
fn write_sharded_copy(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        default_model_dir().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(default_model_dir().join("model.safetensors")).unwrap();
    let single = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = single.names();
    names.sort();
    let per_shard = names.len().div_ceil(SHARDS);
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0;
    for (k, chunk) in names.chunks(per_shard).enumerate() {
        let file = format!("model-{:05}-of-{SHARDS:05}.safetensors", k + 1);
        let tensors: Vec<_> = chunk
            .iter()
            .map(|name| (name.to_string(), single.tensor(name).unwrap()))
            .collect();
        for (name, view) in &tensors {
            total_size += view.data().len();
            weight_map.insert(name.clone(), file.clone());
        }
        safetensors::serialize_to_file(tensors, None, &dir.join(&file)).unwrap();
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total_size},
        "weight_map": weight_map,
    });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// Every position's logits for two sequences in one batch.
fn logits(model: &DeepSeekModel) -> Vec<Vec<f32>> {
    let tokens: [Vec<u32>; 2] = [
        (0..19).map(|i| (i * 97 % 3900) as u32).collect(),
        (0..7).map(|i| (i * 31 + 5) as u32).collect(),
    ];
    let mut cache = cache_for(model, 16);
    let batch = Batch {
        seqs: tokens
            .iter()
            .enumerate()
            .map(|(s, tokens)| SeqInput {
                tokens: tokens.clone(),
                num_cached: 0,
                block_table: blocks(8 * s as u32, 8),
                logits: LogitsRows::All,
            })
            .collect(),
    };
    model
        .forward(&batch, &mut cache)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn sharded_checkpoint_gives_the_single_files_logits_exactly() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("ferroseek-sharded-{}", std::process::id())));
    write_sharded_copy(&dir.0);
    let hub = HubOptions::from_env(None);
    let sharded_files = resolve_model(dir.0.to_str().unwrap(), &hub).unwrap();
    let names: Vec<_> = sharded_files
        .weights
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        (1..=SHARDS)
            .map(|k| format!("model-{k:05}-of-{SHARDS:05}.safetensors"))
            .collect::<Vec<_>>()
    );
    let single_files = resolve_model(default_model_dir().to_str().unwrap(), &hub).unwrap();
    assert_eq!(single_files.weights.len(), 1);

    let sharded = DeepSeekModel::load(&sharded_files, &LoadOptions::default()).unwrap();
    let single = DeepSeekModel::load(&single_files, &LoadOptions::default()).unwrap();
    assert_eq!(sharded.weights_dtype(), single.weights_dtype());
    let (a, b) = (logits(&sharded), logits(&single));
    assert_eq!(a.len(), 26);
    assert!(a == b, "sharded and single-file logits differ");
}

/// An index that names a shard the folder lacks is an error naming the shard.
#[test]
fn a_missing_shard_is_named() {
    let dir = TempDir(
        std::env::temp_dir().join(format!("ferroseek-sharded-missing-{}", std::process::id())),
    );
    write_sharded_copy(&dir.0);
    let gone = format!("model-00002-of-{SHARDS:05}.safetensors");
    std::fs::remove_file(dir.0.join(&gone)).unwrap();
    let err = resolve_model(dir.0.to_str().unwrap(), &HubOptions::from_env(None)).unwrap_err();
    assert!(err.to_string().contains(&gone), "{err}");
}
