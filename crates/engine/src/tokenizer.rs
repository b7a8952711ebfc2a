//! A model's tokenizer, assembled from the files of a Hugging Face model
//! folder: `tokenizer.json` (the `tokenizers` crate does the encoding), or
//! else tiktoken's `tiktoken.model` (Kimi-K2, Moonlight; built into the
//! same kind of tokenizer by `tiktoken.rs`), `tokenizer_config.json`
//! (special tokens, `add_bos_token`, the chat template, the added tokens of
//! a rank file), `chat_template.jinja` (newer checkpoints keep the template
//! there; it wins over the config's) and `generation_config.json` (the
//! end-of-sequence ids generation stops at).

mod tiktoken;

pub use tiktoken::KIMI_PATTERN;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::template::{ChatInput, ChatTemplate, SpecialTokens, TemplateSource};

/// Where the tokenizer's files are. One of `tokenizer_json` and
/// `tiktoken_model` is required; `tokenizer.json` wins when both are there,
/// as in transformers, whose fast tokenizer reads it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerFiles {
    pub tokenizer_json: Option<PathBuf>,
    /// tiktoken's rank file, whose added tokens `tokenizer_config.json` lists.
    pub tiktoken_model: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
}

impl TokenizerFiles {
    /// The standard file names in `dir`; optional files that do not exist are left out.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Self {
            tokenizer_json: optional("tokenizer.json"),
            tiktoken_model: optional("tiktoken.model"),
            tokenizer_config: optional("tokenizer_config.json"),
            generation_config: optional("generation_config.json"),
            chat_template: optional("chat_template.jinja"),
        }
    }
}

impl From<&ferroseek_model::ModelFiles> for TokenizerFiles {
    /// The tokenizer's files among a checkpoint's (a folder or a hub snapshot).
    fn from(files: &ferroseek_model::ModelFiles) -> Self {
        Self {
            tokenizer_json: files.tokenizer.clone(),
            tiktoken_model: files.tiktoken.clone(),
            tokenizer_config: files.tokenizer_config.clone(),
            generation_config: files.generation_config.clone(),
            chat_template: files.chat_template.clone(),
        }
    }
}

/// Encoding, decoding, special tokens and the chat template of one model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    bos_token_id: Option<u32>,
    add_bos_token: bool,
    eos_token_ids: Vec<u32>,
    vocab_size: usize,
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Load the tokenizer of the model folder `dir`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_files(&TokenizerFiles::in_dir(dir))
    }

    /// Load the tokenizer from explicitly named files.
    pub fn from_files(files: &TokenizerFiles) -> Result<Self> {
        let config = match &files.tokenizer_config {
            Some(path) => Some((path.as_path(), read_json(path)?)),
            None => None,
        };
        let inner = match (&files.tokenizer_json, &files.tiktoken_model) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                tokenizers::Tokenizer::from_bytes(&bytes)
                    .map_err(|e| invalid(path, e.to_string()))?
            }
            (None, Some(path)) => tiktoken::load(path, config.as_ref().map(|(p, c)| (*p, c)))?,
            (None, None) => return Err(Error::NoTokenizer),
        };
        let generation = match &files.generation_config {
            Some(path) => Some((path.as_path(), read_json(path)?)),
            None => None,
        };
        Self::assemble(inner, config, generation, files.chat_template.as_deref())
    }

    pub(crate) fn assemble(
        inner: tokenizers::Tokenizer,
        config: Option<(&Path, Json)>,
        generation: Option<(&Path, Json)>,
        chat_template_file: Option<&Path>,
    ) -> Result<Self> {
        let mut special = SpecialTokens::default();
        let mut add_bos_token = false;
        let mut template_source = None;
        if let Some((path, config)) = &config {
            special.bos_token = special_token(path, config, "bos_token")?;
            special.eos_token = special_token(path, config, "eos_token")?;
            special.unk_token = special_token(path, config, "unk_token")?;
            special.pad_token = special_token(path, config, "pad_token")?;
            add_bos_token = match config.get("add_bos_token") {
                None | Some(Json::Null) => false,
                Some(Json::Bool(b)) => *b,
                Some(other) => {
                    return Err(invalid(
                        path,
                        format!("`add_bos_token` must be a bool, got {other}"),
                    ))
                }
            };
            template_source = chat_template_source(path, config)?;
        }
        // The file wins over the config's `chat_template`, as in transformers
        // (`PreTrainedTokenizerBase._from_pretrained`, 5.x: "independent chat
        // template file(s) ... take priority over template entries in the
        // tokenizer config").
        if let Some(path) = chat_template_file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            template_source = Some(TemplateSource::Single(text));
        }

        let id_of = |path: &Path, token: &Option<String>, field: &str| -> Result<Option<u32>> {
            match token {
                None => Ok(None),
                Some(token) => inner.token_to_id(token).map(Some).ok_or_else(|| {
                    invalid(
                        path,
                        format!("`{field}` {token:?} is not in the tokenizer's vocabulary"),
                    )
                }),
            }
        };
        let mut eos_token_ids = Vec::new();
        if let Some((path, generation)) = &generation {
            eos_token_ids = generation_eos_ids(path, generation)?;
        }
        let mut bos_token_id = None;
        if let Some((path, _)) = &config {
            bos_token_id = id_of(path, &special.bos_token, "bos_token")?;
            if let Some(eos) = id_of(path, &special.eos_token, "eos_token")? {
                if !eos_token_ids.contains(&eos) {
                    eos_token_ids.push(eos);
                }
            }
        }

        let max_added = inner
            .get_added_tokens_decoder()
            .keys()
            .map(|id| *id as usize + 1)
            .max();
        let vocab_size = inner.get_vocab_size(true).max(max_added.unwrap_or(0));
        let chat_template = match template_source {
            Some(source) => Some(ChatTemplate::new(source, special.clone())?),
            None => None,
        };
        tracing::debug!(
            vocab_size,
            ?eos_token_ids,
            has_chat_template = chat_template.is_some(),
            "tokenizer loaded"
        );
        Ok(Self {
            inner,
            special,
            bos_token_id,
            add_bos_token,
            eos_token_ids,
            vocab_size,
            chat_template,
        })
    }

    /// Token ids of `text`. With `add_special_tokens` the post-processor of
    /// `tokenizer.json` runs and, when the config asks for it
    /// (`add_bos_token`), the ids start with BOS. A rendered chat template
    /// already holds its BOS: encode it without special tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|source| Error::Tokenizer {
                action: "encode",
                source,
            })?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special_tokens && self.add_bos_token {
            if let Some(bos) = self.bos_token_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`; ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| Error::Tokenizer {
                action: "decode",
                source,
            })
    }

    /// Render the model's chat template and encode the result (without
    /// adding special tokens: the template prints BOS itself).
    pub fn encode_chat(&self, input: &ChatInput<'_>) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(input)?;
        self.encode(&text, false)
    }

    /// Render the model's chat template.
    pub fn apply_chat_template(&self, input: &ChatInput<'_>) -> Result<String> {
        match &self.chat_template {
            Some(template) => template.render(input),
            None => Err(Error::NoChatTemplate(
                "neither `tokenizer_config.json` nor `chat_template.jinja` has one".into(),
            )),
        }
    }

    /// The chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids that end generation: `generation_config.json`'s `eos_token_id`
    /// (one or a list) followed by the config's `eos_token`, without repeats.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The special tokens as strings, as chat templates see them.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Number of token ids, added tokens included (one more than the largest id).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

impl std::fmt::Debug for Tokenizer {
    /// Leaves out the vocabulary, which would fill a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("special", &self.special)
            .field("bos_token_id", &self.bos_token_id)
            .field("add_bos_token", &self.add_bos_token)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("chat_template", &self.chat_template)
            .finish_non_exhaustive()
    }
}

impl From<tokenizers::Tokenizer> for Tokenizer {
    /// A tokenizer with no config: no special-token strings, no eos ids, no chat template.
    fn from(inner: tokenizers::Tokenizer) -> Self {
        let max_added = inner
            .get_added_tokens_decoder()
            .keys()
            .map(|id| *id as usize + 1)
            .max();
        let vocab_size = inner.get_vocab_size(true).max(max_added.unwrap_or(0));
        Self {
            inner,
            special: SpecialTokens::default(),
            bos_token_id: None,
            add_bos_token: false,
            eos_token_ids: Vec::new(),
            vocab_size,
            chat_template: None,
        }
    }
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::InvalidFile {
        path: path.to_owned(),
        reason,
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))
}

/// A special token given as `"<s>"` or as `{"content": "<s>", ...}`.
fn special_token(path: &Path, config: &Json, field: &str) -> Result<Option<String>> {
    match config.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(obj)) => match obj.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(invalid(
                path,
                format!("`{field}` is an object without a string `content`"),
            )),
        },
        Some(other) => Err(invalid(
            path,
            format!("`{field}` must be a string or an object with `content`, got {other}"),
        )),
    }
}

/// `chat_template` as a string, or as `[{"name": ..., "template": ...}]`.
fn chat_template_source(path: &Path, config: &Json) -> Result<Option<TemplateSource>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(TemplateSource::Single(s.clone()))),
        Some(Json::Array(list)) => {
            let mut named = Vec::with_capacity(list.len());
            for (i, entry) in list.iter().enumerate() {
                let field = |key: &str| entry.get(key).and_then(Json::as_str).map(str::to_owned);
                match (field("name"), field("template")) {
                    (Some(name), Some(template)) => named.push((name, template)),
                    _ => {
                        return Err(invalid(
                            path,
                            format!(
                                "`chat_template[{i}]` needs string fields `name` and `template`"
                            ),
                        ))
                    }
                }
            }
            Ok(Some(TemplateSource::Named(named)))
        }
        Some(other) => Err(invalid(
            path,
            format!("`chat_template` must be a string or a list of named templates, got {other}"),
        )),
    }
}

/// `eos_token_id` as one id or a list of ids.
fn generation_eos_ids(path: &Path, generation: &Json) -> Result<Vec<u32>> {
    let as_id = |v: &Json| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let bad = |v: &Json| {
        invalid(
            path,
            format!("`eos_token_id` must be a token id or a list of them, got {v}"),
        )
    };
    match generation.get("eos_token_id") {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(list)) => {
            let mut ids = Vec::with_capacity(list.len());
            for v in list {
                let id = as_id(v).ok_or_else(|| bad(v))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Ok(ids)
        }
        Some(v) => Ok(vec![as_id(v).ok_or_else(|| bad(v))?]),
    }
}
