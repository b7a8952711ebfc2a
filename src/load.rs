//! Loading: find the model (the embedded one, a folder or a hub id), read
//! its tokenizer and chat template, load the weights, size the KV cache and
//! start the engine — logging each step, since a real checkpoint takes a
//! while.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device};
use ferroseek_engine::output::hidden_special_tokens;
use ferroseek_engine::{Engine, EngineConfig, Grammars, Tokenizer, TokenizerFiles, ToolCallFormat};
use ferroseek_model::{
    resolve_model, resolve_model_with_gguf_file, CacheDType, CheckpointFormat, DeepSeekModel,
    HubOptions, LoadOptions, ModelFiles,
};

use crate::cli::{AttentionDType, GenerationConfig, KvCacheDType, ServeArgs};
use crate::embedded;
use crate::generation_defaults;
use crate::openai::common::unix_now;
use crate::state::Ready;
use crate::tokens::TokenTable;

/// The names clients may use for the model, and the `root` to report.
pub fn served_names(args: &ServeArgs) -> (Vec<String>, String) {
    let root = args
        .model
        .clone()
        .unwrap_or_else(|| embedded::NAME.to_string());
    let names: Vec<String> = args
        .served_model_name
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        (vec![root.clone()], root)
    } else {
        (names, root)
    }
}

fn resolve(args: &ServeArgs) -> Result<ModelFiles> {
    let hub = HubOptions::from_env(args.revision.clone());
    match &args.model {
        None if args.gguf_file.is_some() => {
            bail!("`--gguf-file` names a file of the `--model` folder or hub repository; give `--model`")
        }
        None => {
            let dir = embedded::materialize()
                .context("cannot write the embedded model to a cache folder")?;
            tracing::info!(folder = %dir.display(), "using the embedded model {}", embedded::NAME);
            resolve_model(&dir.to_string_lossy(), &hub).context("embedded model")
        }
        Some(model) => {
            tracing::info!(model = %model, revision = %hub.revision, "resolving the model");
            resolve_model_with_gguf_file(model, args.gguf_file.as_deref(), &hub)
                .with_context(|| format!("cannot find the model `{model}`"))
        }
    }
}

/// The chat template file: `--chat-template`, else a `chat_template.jinja`
/// beside `config.json` (newer checkpoints keep it there).
fn chat_template_file(args: &ServeArgs, files: &ModelFiles) -> Result<Option<PathBuf>> {
    if let Some(path) = &args.chat_template {
        if !path.is_file() {
            bail!(
                "`--chat-template` {} is not a readable file",
                path.display()
            );
        }
        return Ok(Some(path.clone()));
    }
    Ok(files.chat_template.clone())
}

/// The tokenizer and the `generation_config.json` beside it: from
/// `--tokenizer`'s folder, else the model's files, else (GGUF) the file's
/// metadata.
fn load_tokenizer(args: &ServeArgs, files: &ModelFiles) -> Result<(Tokenizer, Option<PathBuf>)> {
    let chat_template = chat_template_file(args, files)?;
    if let Some(dir) = &args.tokenizer {
        let mut found = TokenizerFiles::in_dir(dir);
        if found.tokenizer_json.is_none() && found.tiktoken_model.is_none() {
            bail!(
                "`--tokenizer` {} has neither tokenizer.json nor tiktoken.model",
                dir.display()
            );
        }
        if args.chat_template.is_some() {
            found.chat_template = chat_template;
        }
        let generation = found.generation_config.clone();
        let tokenizer = Tokenizer::from_files(&found)
            .with_context(|| format!("cannot load the tokenizer of {}", dir.display()))?;
        return Ok((tokenizer, generation));
    }
    if files.format == CheckpointFormat::Gguf {
        let tokenizer = Tokenizer::from_gguf(&files.config, chat_template.as_deref()).context(
            "cannot load the GGUF file's tokenizer (`--tokenizer` takes a folder with the model's tokenizer.json instead)",
        )?;
        return Ok((tokenizer, None));
    }
    let tokenizer = Tokenizer::from_files(&TokenizerFiles {
        chat_template,
        ..TokenizerFiles::from(files)
    })
    .context("cannot load the tokenizer")?;
    Ok((tokenizer, files.generation_config.clone()))
}

/// The cache storage `choice` names for a model computing in `compute`.
/// `auto` stores what the model computes, as vLLM's `auto` does: bf16
/// where the activations are bf16 or f16 (the cache's rounding then adds
/// little to theirs), f32 where they are f32, which keeps the reference's
/// numbers to 1e-4; `bf16` there is the faster choice at long contexts,
/// within the bound the README states.
fn cache_dtype(choice: KvCacheDType, compute: DType) -> CacheDType {
    match choice {
        KvCacheDType::F32 => CacheDType::F32,
        KvCacheDType::Bf16 => CacheDType::Bf16,
        KvCacheDType::Fp8 => CacheDType::Fp8,
        KvCacheDType::Auto if compute == DType::F32 => CacheDType::F32,
        KvCacheDType::Auto => CacheDType::Bf16,
    }
}

/// The model's setting for `--attention-dtype`; bf16 where the CPU cannot
/// multiply bf16 tiles computes in f32, and says so.
fn attention_dtype(choice: AttentionDType) -> ferroseek_model::AttentionDType {
    match choice {
        AttentionDType::F32 => ferroseek_model::AttentionDType::F32,
        AttentionDType::Bf16 => {
            if !ferroseek_model::kernels::attention::bf16_tiles_available() {
                tracing::warn!(
                    "--attention-dtype bf16: this CPU has no AMX-BF16 tiles (or Linux refused \
                     them); prompts' attention computes in f32"
                );
            }
            ferroseek_model::AttentionDType::Bf16
        }
    }
}

fn total_size(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(Path::new(p)).ok())
        .map(|m| m.len())
        .sum()
}

/// Loads everything onto `device` (the opened `--device`) and starts the
/// engine thread. Blocking: run it off the async runtime.
pub fn load(args: &ServeArgs, device: Device) -> Result<Ready> {
    let started = Instant::now();
    let files = resolve(args)?;
    let (tokenizer, generation_config) = load_tokenizer(args, &files)?;
    if tokenizer.chat_template().is_none() {
        tracing::warn!("the model has no chat template: /v1/chat/completions will answer 400 (see `--chat-template`)");
    }
    tracing::info!(
        vocab = tokenizer.vocab_size(),
        eos = ?tokenizer.eos_token_ids(),
        "tokenizer loaded"
    );

    let generation_file = match args.generation_config {
        GenerationConfig::Auto => generation_config.as_deref(),
        GenerationConfig::None => None,
    };
    let (sampling_defaults, taken) = generation_defaults::from_file(generation_file)?;
    if !taken.is_empty() {
        tracing::info!(
            defaults = taken.join(" "),
            "sampling defaults from generation_config.json (`--generation-config none` ignores them)"
        );
    }

    let weights_mib = total_size(&files.weights) as f64 / (1 << 20) as f64;
    tracing::info!(
        files = files.weights.len(),
        size_mib = format!("{weights_mib:.1}"),
        dtype = ?args.dtype,
        quantize = ?args.quantize,
        device = %args.device,
        "loading weights"
    );
    let load_options = LoadOptions {
        dtype: args.dtype,
        max_positions: args.max_model_len,
        quantize: args.quantize,
        attention_dtype: attention_dtype(args.attention_dtype),
        device,
        ..Default::default()
    };
    let t = Instant::now();
    let model = DeepSeekModel::load(&files, &load_options).context("cannot load the weights")?;
    let vocab_size = model.config().vocab_size;
    let trained = model.config().max_position_embeddings;
    if let Some(len) = args.max_model_len.filter(|&len| len > trained) {
        // As llama.cpp warns (and caps); vLLM refuses without an override.
        tracing::warn!(
            max_model_len = len,
            max_position_embeddings = trained,
            "--max-model-len is past the positions the model was made for: answers may degrade there"
        );
    }
    tracing::info!(
        seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
        compute_dtype = ?model.dtype(),
        weights_dtype = ?model.weights_dtype(),
        quantize = ?model.weights().quantize,
        decode_mb_per_token = format!("{:.0}", model.decode_weight_bytes() as f64 / 1e6),
        layers = model.config().num_hidden_layers,
        "weights loaded"
    );

    let reasoning =
        tokenizer.token_to_id("<think>").is_some() && tokenizer.token_to_id("</think>").is_some();
    let tool_format = args.tool_call_parser.or_else(|| {
        let template = tokenizer.chat_template()?;
        ToolCallFormat::detect(&template.source())
    });
    match tool_format {
        Some(format) => tracing::info!(format = %format, "tool calls are parsed"),
        None => tracing::info!(
            "no tool-call syntax in the chat template: tool calls stay text (see `--tool-call-parser`)"
        ),
    }
    let hidden_special_tokens: Arc<[String]> = tool_format
        .map(|format| hidden_special_tokens(&tokenizer, format))
        .unwrap_or_default()
        .into();
    let tokenizer = Arc::new(tokenizer);
    let kv_cache_dtype = cache_dtype(args.kv_cache_dtype, model.dtype());
    let engine = Engine::start(
        model,
        tokenizer.clone(),
        EngineConfig {
            max_num_seqs: args.max_num_seqs,
            max_num_batched_tokens: args.max_num_batched_tokens,
            block_size: args.block_size,
            kv_cache_bytes: args.kv_cache_memory,
            kv_cache_dtype,
            max_model_len: args.max_model_len,
            max_queue: args.max_queue,
            max_buffered_events: args.max_buffered_events as usize,
        },
    )
    .context("cannot start the engine")?;
    let stats = engine.stats();
    tracing::info!(
        blocks = stats.blocks_total,
        block_size = stats.block_size,
        kv_cache_dtype = kv_cache_dtype.name(),
        attention_dtype = ?args.attention_dtype,
        max_model_len = engine.max_model_len(),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "model ready"
    );
    let tokens = TokenTable::new(&tokenizer, vocab_size);
    let grammars = Grammars::new(tokenizer.clone(), &tokens)
        .map_err(|e| anyhow::anyhow!("cannot build the grammar engine: {e}"))?;
    Ok(Ready {
        engine,
        tokens,
        grammars: Arc::new(grammars),
        vocab_size,
        sampling_defaults,
        reasoning,
        tool_format,
        hidden_special_tokens,
        created: unix_now(),
    })
}
