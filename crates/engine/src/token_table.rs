//! Each token id's own bytes and text, built once per model: `logprobs`
//! (`token`, `bytes`, `top_logprobs`) and `text_offset` show them, and
//! constrained decoding builds its token trie from them. Byte-level BPE
//! vocabularies (all DeepSeek models) spell bytes as printable characters
//! (GPT-2's `bytes_to_unicode`); they are mapped back here, so a token
//! holding half of a UTF-8 character reports its real bytes. Byte-fallback
//! vocabularies (`<0x41>`) give their byte.

use std::collections::HashMap;

use tokenizers::DecoderWrapper;

use crate::tokenizer::Tokenizer;

/// The bytes and specialness of every token id, built once at load.
pub struct TokenTable {
    bytes: Vec<Box<[u8]>>,
    special: Vec<bool>,
    /// Added tokens (`added_tokens` of tokenizer.json): matched whole in
    /// text, never split by the model's merges.
    added: Vec<bool>,
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
        let mut is_added = Vec::with_capacity(size);
        for id in 0..size as u32 {
            if let Some(token) = added.get(&id) {
                bytes.push(token.content.as_bytes().into());
                special.push(token.special);
                is_added.push(true);
                continue;
            }
            special.push(false);
            is_added.push(false);
            let piece = match (&unbyte, tokenizer.id_to_token(id)) {
                (Some(map), Some(token)) => token
                    .chars()
                    .map(|c| map.get(&c).copied())
                    .collect::<Option<Vec<u8>>>(),
                (None, Some(token)) => sentencepiece_bytes(&token),
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
        TokenTable {
            bytes,
            special,
            added: is_added,
        }
    }

    /// Ids `0..len()` have an entry (the larger of the model's and the
    /// tokenizer's vocabulary).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
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

    /// An added token (special or not: `<think>`, a tool-call marker).
    pub fn is_added(&self, id: u32) -> bool {
        self.added.get(id as usize).copied().unwrap_or(false)
    }
}

/// A SentencePiece-style token's bytes: `<0x0A>` is its byte (byte
/// fallback), and `▁` stands for a space. `None` for a token to decode.
fn sentencepiece_bytes(token: &str) -> Option<Vec<u8>> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
        if hex.len() == 2 {
            return u8::from_str_radix(hex, 16).ok().map(|b| vec![b]);
        }
    }
    token
        .contains('▁')
        .then(|| token.replace('▁', " ").into_bytes())
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

    #[test]
    fn sentencepiece_tokens_give_their_bytes() {
        assert_eq!(sentencepiece_bytes("<0x0A>"), Some(vec![b'\n']));
        assert_eq!(sentencepiece_bytes("▁the").as_deref(), Some(&b" the"[..]));
        assert_eq!(sentencepiece_bytes("ing"), None);
    }
}
