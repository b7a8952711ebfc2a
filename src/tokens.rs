//! Each token id's own bytes and text, for `logprobs` (`token`, `bytes`,
//! `top_logprobs`) and `text_offset`. Byte-level BPE vocabularies (all
//! DeepSeek models) spell bytes as printable characters (GPT-2's
//! `bytes_to_unicode`); they are mapped back here, so a token holding half
//! of a UTF-8 character reports its real bytes.

use std::collections::HashMap;

use ferroseek_engine::Tokenizer;
use tokenizers::DecoderWrapper;

use crate::error::ApiError;

/// Runs tokenizer work (templating, encoding or decoding a prompt) on
/// tokio's blocking threads: a long prompt takes long enough to hold up the
/// requests the async runtime is serving meanwhile.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))?
}

/// The bytes and specialness of every token id, built once at load.
pub struct TokenTable {
    bytes: Vec<Box<[u8]>>,
    special: Vec<bool>,
}

impl TokenTable {
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Self {
        let inner = tokenizer.inner();
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let unbyte = byte_level.then(unicode_to_byte);
        let added = inner.get_added_tokens_decoder();
        let size = vocab_size.max(tokenizer.vocab_size());
        let mut bytes = Vec::with_capacity(size);
        let mut special = Vec::with_capacity(size);
        for id in 0..size as u32 {
            if let Some(token) = added.get(&id) {
                bytes.push(token.content.as_bytes().into());
                special.push(token.special);
                continue;
            }
            special.push(false);
            let piece = match (&unbyte, tokenizer.id_to_token(id)) {
                (Some(map), Some(token)) => token
                    .chars()
                    .map(|c| map.get(&c).copied())
                    .collect::<Option<Vec<u8>>>(),
                _ => None,
            };
            let piece = piece.unwrap_or_else(|| {
                tokenizer
                    .decode(&[id], false)
                    .map(String::into_bytes)
                    .unwrap_or_default()
            });
            bytes.push(piece.into_boxed_slice());
        }
        TokenTable { bytes, special }
    }

    /// The token's bytes (empty for an id outside the vocabulary).
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(|b| &b[..]).unwrap_or(&[])
    }

    /// The token's text; bytes that are not valid UTF-8 on their own are
    /// shown as U+FFFD (the real bytes are in `bytes`).
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    /// A special token (BOS, EOS, padding): dropped from decoded text.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable bytes stand for
/// themselves, the other 68 are shifted to U+0100 and up.
fn unicode_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips_all_bytes() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }
}
