//! The command line: `ferroseek serve [flags]` (also what `ferroseek` alone
//! runs). Every flag can also come from a `FERROSEEK_*` environment variable.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferroseek_engine::ToolCallFormat;
use ferroseek_model::{DTypeChoice, Quantization};
use subtle::ConstantTimeEq;

use crate::device::DeviceChoice;

#[derive(Debug, Parser)]
#[command(
    name = "ferroseek",
    version,
    about = "An OpenAI-compatible inference server for DeepSeek-architecture models",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over the OpenAI HTTP API (the default).
    Serve(ServeArgs),
}

impl Cli {
    /// The serve flags, whether `serve` was written or not.
    pub fn into_serve(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            None => self.serve,
        }
        .unset_empty()
    }
}

impl ServeArgs {
    /// An empty value means unset: compose files and shell scripts pass
    /// `FERROSEEK_MODEL=` for "the default", and an empty `--api-key` must
    /// never become a key that an empty bearer token matches.
    fn unset_empty(mut self) -> Self {
        for field in [&mut self.model, &mut self.revision, &mut self.gguf_file] {
            if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *field = None;
            }
        }
        if self.api_key.as_ref().is_some_and(|k| k.0.trim().is_empty()) {
            self.api_key = None;
        }
        for field in [&mut self.chat_template, &mut self.tokenizer] {
            if field.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *field = None;
            }
        }
        self.served_model_name.retain(|n| !n.trim().is_empty());
        self.cors_allow_origin.retain(|o| !o.trim().is_empty());
        self
    }
}

/// The key clients must send; its `Debug` prints `[redacted]`, so neither
/// the configuration nor a log line shows it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// Whether `given` is the key, compared in constant time.
    pub fn matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where sampling defaults come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerationConfig {
    /// The model's `generation_config.json`, where it has one.
    Auto,
    /// The OpenAI defaults (temperature 1, top_p 1).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheDType {
    /// As the activations: bf16 where `--dtype` makes them bf16 or f16,
    /// else f32.
    Auto,
    /// The reference's numbers.
    F32,
    /// Half the bytes; each number rounded to 8 significant bits (the
    /// README states the accuracy measured).
    Bf16,
    /// A quarter of the bytes; each number rounded to fp8 e4m3's 4
    /// significant bits (the README states the accuracy measured).
    Fp8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttentionDType {
    /// The reference's numbers.
    F32,
    /// bf16 operands on Intel AMX tiles, where the CPU has them (the
    /// README states the accuracy measured).
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model to serve: a Hugging Face hub id (`deepseek-ai/DeepSeek-V2-Lite-Chat`), a
    /// local folder, or a GGUF file (of a split set, the first:
    /// `…-00001-of-0000N.gguf`). Default: the small model embedded in the binary.
    #[arg(long, env = "FERROSEEK_MODEL")]
    pub model: Option<String>,

    /// Branch, tag or commit of a hub model.
    #[arg(long, env = "FERROSEEK_REVISION")]
    pub revision: Option<String>,

    /// The GGUF file to serve from the `--model` folder or hub repository
    /// (`model-Q8_0.gguf`, or a path in it such as `Q8_0/…-00001-of-00003.gguf`; of a
    /// split set, the first), which brings the rest of its set. Needed only where it holds
    /// several; one GGUF (or split set) and no safetensors is served without it.
    #[arg(long, env = "FERROSEEK_GGUF_FILE")]
    pub gguf_file: Option<String>,

    /// Precision of weights and compute: auto, f32, bf16 or f16.
    #[arg(long, env = "FERROSEEK_DTYPE", default_value = "auto", value_parser = parse_dtype)]
    pub dtype: DTypeChoice,

    /// Where the model computes: cpu, cuda (the first GPU) or cuda:N. A GPU needs a
    /// binary built with `--features cuda`.
    #[arg(long, env = "FERROSEEK_DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceChoice,

    /// Quantize the linear weights at load: none, q8_0 or q4_k (less memory, faster CPU decode).
    #[arg(long, env = "FERROSEEK_QUANTIZE", default_value = "none", value_parser = parse_quantization)]
    pub quantize: Quantization,

    /// Name(s) clients use in `model` (comma-separated); the first is the one reported.
    /// Default: the `--model` value (`arith-deepseek-v3` for the embedded model).
    #[arg(long, env = "FERROSEEK_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Vec<String>,

    /// Address to listen on; `0.0.0.0` exposes the server to the network.
    #[arg(long, env = "FERROSEEK_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one and logs it).
    #[arg(long, env = "FERROSEEK_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Most sequences decoded together in one step.
    #[arg(long, env = "FERROSEEK_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,

    /// Most tokens (prompt chunks and decode tokens) in one step.
    #[arg(long, env = "FERROSEEK_MAX_NUM_BATCHED_TOKENS", default_value_t = 2048)]
    pub max_num_batched_tokens: usize,

    /// Longest sequence (prompt + generated tokens); default: the model's.
    #[arg(long, env = "FERROSEEK_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,

    /// Memory for the latent KV cache, e.g. `512MiB`, `4GiB` or a number of bytes.
    #[arg(long, env = "FERROSEEK_KV_CACHE_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub kv_cache_memory: usize,

    /// How the latent KV cache stores its numbers: auto, f32, bf16 or fp8.
    /// bf16 takes half the memory per token (twice the tokens in
    /// `--kv-cache-memory`) and half the bytes a decode step reads at long
    /// context, rounding each cached number to 8 significant bits; fp8
    /// (e4m3) a quarter, rounding to 4.
    #[arg(long, env = "FERROSEEK_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDType::Auto)]
    pub kv_cache_dtype: KvCacheDType,

    /// What a prompt's attention multiplies: f32 or bf16. bf16 rounds the
    /// queries, keys, attention weights and values to bf16 and multiplies
    /// them on Intel AMX tiles (sums in f32), about twice as fast on long
    /// prompts; on CPUs without AMX-BF16 it computes in f32. Decoding is
    /// unchanged.
    #[arg(long, env = "FERROSEEK_ATTENTION_DTYPE", value_enum, default_value_t = AttentionDType::F32)]
    pub attention_dtype: AttentionDType,

    /// Tokens per KV cache block.
    #[arg(long, env = "FERROSEEK_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,

    /// Most requests waiting for the engine; more are answered 429.
    #[arg(long, env = "FERROSEEK_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Most tokens a streamed choice may hold unsent while its client does
    /// not read; past that the request is cancelled and its cache freed.
    #[arg(long, env = "FERROSEEK_MAX_BUFFERED_EVENTS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_buffered_events: u32,

    /// Require `Authorization: Bearer <key>` on `/v1/*`, `/tokenize` and `/detokenize`.
    #[arg(long, env = "FERROSEEK_API_KEY", hide_env_values = true, value_parser = parse_api_key)]
    pub api_key: Option<ApiKey>,

    /// Compute threads (default: one per core).
    #[arg(long, env = "FERROSEEK_THREADS")]
    pub threads: Option<usize>,

    /// A Jinja chat template file that replaces the model's.
    #[arg(long, env = "FERROSEEK_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,

    /// A folder whose tokenizer.json (with tokenizer_config.json,
    /// generation_config.json, chat_template.jinja where present) replaces
    /// the model's tokenizer: for a GGUF file whose pre-tokenizer is not
    /// supported yet, give the original model's folder.
    #[arg(long, env = "FERROSEEK_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,

    /// The tool-call syntax to take out of the model's text for requests
    /// with `tools`: deepseek_v3 (V3, R1), deepseek_v31, deepseek_v32 (DSML:
    /// V3.2, V4) or kimi_k2. Default: detected from the chat template.
    #[arg(long, env = "FERROSEEK_TOOL_CALL_PARSER", value_parser = parse_tool_call_parser)]
    pub tool_call_parser: Option<ToolCallFormat>,

    /// Sampling defaults for fields a request leaves out: `auto` takes the
    /// model's `generation_config.json` (temperature, top_p, top_k, min_p,
    /// repetition_penalty), `none` the OpenAI defaults.
    #[arg(long, env = "FERROSEEK_GENERATION_CONFIG", value_enum, default_value_t = GenerationConfig::Auto)]
    pub generation_config: GenerationConfig,

    /// Largest request body accepted; larger ones are answered 413.
    #[arg(long, env = "FERROSEEK_MAX_BODY_SIZE", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_body_size: usize,

    /// Allow browser requests from these origins (comma-separated, or `*` for any).
    #[arg(long, env = "FERROSEEK_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Seconds running requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "FERROSEEK_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// Seconds a client has to send a request's headers (and an idle
    /// keep-alive connection waits for its next request); then the
    /// connection is closed. Bounds slow-header (slowloris) clients.
    #[arg(long, env = "FERROSEEK_HEADER_READ_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,

    /// Seconds a client has to send a whole request body once its headers
    /// arrived; a body still incomplete then is answered 408.
    #[arg(long, env = "FERROSEEK_BODY_READ_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout: u64,

    /// Log format.
    #[arg(long, env = "FERROSEEK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_api_key(s: &str) -> Result<ApiKey, String> {
    Ok(ApiKey::new(s))
}

fn parse_dtype(s: &str) -> Result<DTypeChoice, String> {
    s.parse()
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

fn parse_tool_call_parser(s: &str) -> Result<ToolCallFormat, String> {
    s.parse()
}

fn parse_quantization(s: &str) -> Result<Quantization, String> {
    s.parse()
}

/// `1073741824`, `1GiB`, `1G`, `512MiB`, `512MB`, `64KiB` (K/M/G/T = 1024 powers,
/// as memory is counted).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 512MiB, 4GiB, 1048576)"))?;
    let power = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 2,
        "g" | "gb" | "gib" => 3,
        "t" | "tb" | "tib" => 4,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    let bytes = number * 1024f64.powi(power);
    if !bytes.is_finite() || bytes < 0.0 || bytes > usize::MAX as f64 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_mean_unset() {
        let args = Cli::parse_from([
            "ferroseek",
            "serve",
            "--model",
            "",
            "--api-key",
            " ",
            "--revision",
            "",
            "--gguf-file",
            "",
        ])
        .into_serve();
        assert_eq!(args.model, None);
        assert!(args.api_key.is_none());
        assert_eq!(args.revision, None);
        assert_eq!(args.gguf_file, None);
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let args = Cli::parse_from(["ferroseek", "--api-key", "sk-secret-4821"]).into_serve();
        let shown = format!("{args:?}");
        assert!(!shown.contains("sk-secret-4821"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let key = args.api_key.unwrap();
        assert!(key.matches("sk-secret-4821"));
        assert!(!key.matches("sk-secret-482") && !key.matches(""));
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn serve_is_the_default_command() {
        let cli = Cli::try_parse_from(["ferroseek", "--port", "9000"]).unwrap();
        assert_eq!(cli.into_serve().port, 9000);
        let cli = Cli::try_parse_from(["ferroseek", "serve", "--port", "9001"]).unwrap();
        let args = cli.into_serve();
        assert_eq!(args.port, 9001);
        assert_eq!(args.host.to_string(), "127.0.0.1");
    }

    #[test]
    fn the_device_defaults_to_the_cpu_and_rejects_unknown_names() {
        let args = Cli::try_parse_from(["ferroseek"]).unwrap().into_serve();
        assert_eq!(args.device, DeviceChoice::Cpu);
        let args = Cli::try_parse_from(["ferroseek", "--device", "cuda:1"])
            .unwrap()
            .into_serve();
        assert_eq!(args.device, DeviceChoice::Cuda(1));
        let err = Cli::try_parse_from(["ferroseek", "--device", "gpu"]).unwrap_err();
        assert!(err.to_string().contains("`cuda:N`"), "{err}");
    }

    #[test]
    fn tool_call_parsers_are_named_and_unknown_names_list_the_known() {
        let args = Cli::try_parse_from(["ferroseek", "--tool-call-parser", "kimi_k2"])
            .unwrap()
            .into_serve();
        assert_eq!(args.tool_call_parser, Some(ToolCallFormat::KimiK2));
        assert_eq!(
            Cli::try_parse_from(["ferroseek"])
                .unwrap()
                .into_serve()
                .tool_call_parser,
            None
        );
        let err = Cli::try_parse_from(["ferroseek", "--tool-call-parser", "hermes"]).unwrap_err();
        let shown = err.to_string();
        for name in ["deepseek_v3", "deepseek_v31", "deepseek_v32", "kimi_k2"] {
            assert!(shown.contains(name), "{shown}");
        }
    }

    #[test]
    fn served_model_names_split_on_commas() {
        let cli = Cli::try_parse_from(["ferroseek", "--served-model-name", "a,b"]).unwrap();
        assert_eq!(cli.into_serve().served_model_name, ["a", "b"]);
    }
}
