//! tiktoken rank files (`tiktoken.model`, as Kimi-K2 and Moonlight ship
//! their tokenizer) turned into a `tokenizers` byte-level BPE that encodes
//! as tiktoken does. The construction is transformers' `TikTokenConverter`
//! (`convert_slow_tokenizer.py`): the vocabulary is every token's bytes
//! through GPT-2's `bytes_to_unicode`, the merges are every split of a token
//! into two tokens, ordered by the merged token's rank, and `ignore_merges`
//! maps a pre-token that is itself a token straight to its id. Special
//! tokens come from `tokenizer_config.json`'s `added_tokens_decoder`, at
//! their ids, the gaps filled with `<|reserved_token_{id}|>` as
//! transformers' `_convert_from_tiktoken` fills them.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use serde_json::Value as Json;

use super::invalid;
use crate::error::{Error, Result};

/// The pre-tokenizing regex of Kimi-K2 and Moonlight (`pat_str` in their
/// `tokenization_kimi.py` / `tokenization_moonshot.py`). A rank file holds
/// no pattern, and these are the DeepSeek-architecture families that ship
/// one. Han runs are their own pieces (the `&&[^\p{Han}]` intersections),
/// so `中文English` splits where cl100k's pattern, transformers' default
/// for rank files, would keep it whole.
pub const KIMI_PATTERN: &str = concat!(
    r"[\p{Han}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// An entry of `added_tokens_decoder`: its id and how it matches.
#[derive(Debug, Clone)]
struct AddedEntry {
    id: u32,
    token: AddedToken,
}

/// Builds the tokenizer of the rank file at `path` with the added tokens
/// of `config` (`tokenizer_config.json`, its path and content) at their ids.
pub(super) fn load(path: &Path, config: Option<(&Path, &Json)>) -> Result<tokenizers::Tokenizer> {
    let added = match config {
        Some((config_path, config)) => {
            warn_unless_kimi(config);
            added_tokens(config_path, config)?
        }
        None => Vec::new(),
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| Error::InvalidFile {
        path: path.to_owned(),
        reason,
    };
    let tokens = read_ranks(&text).map_err(bad)?;
    let (vocab, merges) = vocab_and_merges(&tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(false)
        .ignore_merges(true)
        .build()
        .map_err(|e| bad(format!("cannot build the BPE: {e}")))?;
    let split = Split::new(
        SplitPattern::Regex(KIMI_PATTERN.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| bad(format!("the split pattern does not compile: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    add_special_tokens(&mut tokenizer, tokens.len(), &added).map_err(bad)?;
    Ok(tokenizer)
}

/// The pattern is Kimi's: say so when the config's `auto_map` names another tokenizer.
fn warn_unless_kimi(config: &Json) {
    if let Some(class) = remote_tokenizer(config) {
        if !class.starts_with("tokenization_kimi.") && !class.starts_with("tokenization_moonshot.")
        {
            tracing::warn!(
                class,
                "tiktoken.model is split with Kimi's pattern, but the model's own tokenizer is another; its ids may differ"
            );
        }
    }
}

/// The tokenizer class the config's `auto_map` names (`tokenization_kimi.TikTokenTokenizer`).
fn remote_tokenizer(config: &Json) -> Option<&str> {
    match config.get("auto_map")?.get("AutoTokenizer")? {
        Json::Array(classes) => classes.iter().find_map(Json::as_str),
        other => other.as_str(),
    }
}

/// `added_tokens_decoder`: `{"163584": {"content": "[BOS]", "special": true, ...}}`.
fn added_tokens(path: &Path, config: &Json) -> Result<Vec<AddedEntry>> {
    let decoder = match config.get("added_tokens_decoder") {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Object(decoder)) => decoder,
        Some(other) => {
            return Err(invalid(
                path,
                format!("`added_tokens_decoder` must be an object, got {other}"),
            ))
        }
    };
    let mut added = Vec::with_capacity(decoder.len());
    for (id, entry) in decoder {
        let field = format!("added_tokens_decoder.{id}");
        let id: u32 = id
            .parse()
            .map_err(|_| invalid(path, format!("`{field}`: the key must be a token id")))?;
        let content = entry
            .get("content")
            .and_then(Json::as_str)
            .ok_or_else(|| invalid(path, format!("`{field}` has no string `content`")))?;
        let flag = |name: &str, default: bool| -> Result<bool> {
            match entry.get(name) {
                None | Some(Json::Null) => Ok(default),
                Some(Json::Bool(b)) => Ok(*b),
                Some(other) => Err(invalid(
                    path,
                    format!("`{field}.{name}` must be a bool, got {other}"),
                )),
            }
        };
        // transformers' `AddedToken` defaults; `normalized` does not matter without a normalizer.
        let token = AddedToken::from(content, flag("special", false)?)
            .single_word(flag("single_word", false)?)
            .lstrip(flag("lstrip", false)?)
            .rstrip(flag("rstrip", false)?)
            .normalized(false);
        added.push(AddedEntry { id, token });
    }
    Ok(added)
}

/// The tokens of a rank file in rank order: each non-empty line is
/// `<base64 bytes> <rank>`, and the ranks must be 0, 1, … without gaps,
/// since the rank is the token id and added tokens follow the last one.
fn read_ranks(text: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    let mut seen = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let mut fields = line.split_whitespace();
        let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {number} is not `<base64 token> <rank>`"));
        };
        let bytes = base64_decode(token)
            .ok_or_else(|| format!("line {number}: {token:?} is not base64"))?;
        let rank: usize = rank
            .parse()
            .map_err(|_| format!("line {number}: rank {rank:?} is not a number"))?;
        if let Some(previous) = seen.insert(bytes.clone(), number) {
            return Err(format!(
                "line {number} repeats the token of line {previous}"
            ));
        }
        if rank >= by_rank.len() {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].replace(bytes).is_some() {
            return Err(format!("line {number}: rank {rank} is given twice"));
        }
    }
    if by_rank.is_empty() {
        return Err("holds no tokens".into());
    }
    by_rank
        .into_iter()
        .enumerate()
        .map(|(rank, token)| token.ok_or_else(|| format!("no token has rank {rank}")))
        .collect()
}

/// The standard base64 alphabet with `=` padding, as Python's `b64decode` reads it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = text.trim_end_matches('=');
    if !text.len().is_multiple_of(4) || text.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut word = 0u32;
        for &c in chunk {
            word = word << 6 | digit(c)?;
        }
        word <<= 6 * (4 - chunk.len()) as u32;
        let bytes = word.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// GPT-2's `bytes_to_unicode`: printable bytes keep their character, the
/// other 68 map to U+0100 onwards in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        chars[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    chars
}

/// The vocabulary (rank = id) and every merge that makes a token of two
/// tokens: within a token by the ranks of its halves, tokens in rank order.
fn vocab_and_merges(tokens: &[Vec<u8>]) -> (Vocab, Merges) {
    let chars = byte_chars();
    let text = |bytes: &[u8]| -> String { bytes.iter().map(|&b| chars[b as usize]).collect() };
    let rank: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, bytes)| (bytes.as_slice(), id as u32))
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, bytes)| (text(bytes), id as u32))
        .collect();
    let mut merges = Merges::new();
    let mut splits = Vec::new();
    for token in tokens {
        splits.clear();
        for cut in 1..token.len() {
            let (left, right) = token.split_at(cut);
            if let (Some(&l), Some(&r)) = (rank.get(left), rank.get(right)) {
                splits.push((l, r, cut));
            }
        }
        splits.sort_unstable();
        merges.extend(splits.iter().map(|&(_, _, cut)| {
            let (left, right) = token.split_at(cut);
            (text(left), text(right))
        }));
    }
    (vocab, merges)
}

/// Adds `added` at their ids, which must follow the `ranks` tokens; a gap
/// gets a `<|reserved_token_{id}|>`, since `tokenizers` numbers added
/// tokens in the order they come.
fn add_special_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    ranks: usize,
    added: &[AddedEntry],
) -> std::result::Result<(), String> {
    let mut by_id: Vec<&AddedEntry> = added.iter().collect();
    by_id.sort_by_key(|entry| entry.id);
    let mut tokens = Vec::with_capacity(by_id.len());
    let mut next = ranks as u32;
    for entry in by_id {
        if entry.id < next {
            return Err(format!(
                "added token {:?} has id {}, which the rank file or another added token already has",
                entry.token.content, entry.id
            ));
        }
        tokens.extend(
            (next..entry.id).map(|id| AddedToken::from(format!("<|reserved_token_{id}|>"), true)),
        );
        tokens.push(entry.token.clone());
        next = entry.id + 1;
    }
    tokenizer
        .add_special_tokens(tokens)
        .map_err(|e| format!("cannot add the special tokens: {e}"))?;
    for entry in added {
        let id = tokenizer.token_to_id(&entry.token.content);
        if id != Some(entry.id) {
            return Err(format!(
                "added token {:?} landed at id {id:?}, not {} (its text is also a token of the rank file?)",
                entry.token.content, entry.id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_as_python_does() {
        assert_eq!(base64_decode("IQ==").as_deref(), Some(&b"!"[..]));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGV5").as_deref(), Some(&b"hey"[..]));
        assert_eq!(
            base64_decode("5Lit5paH").as_deref(),
            Some("中文".as_bytes())
        );
        assert_eq!(base64_decode("/w==").as_deref(), Some(&[0xFF][..]));
        assert_eq!(base64_decode("").as_deref(), Some(&[][..]));
        for bad in ["aGk", "a===", "aG!=", "aGk=aGk="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn byte_chars_are_gpt2_bytes_to_unicode() {
        let chars = byte_chars();
        assert_eq!(chars[b'!' as usize], '!');
        assert_eq!(chars[0], '\u{100}');
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[0xAD], '\u{143}');
        let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn merges_list_every_split_in_rank_order() {
        let tokens: Vec<Vec<u8>> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        let (vocab, merges) = vocab_and_merges(&tokens);
        assert_eq!(vocab["abc"], 5);
        let pair = |l: &str, r: &str| (l.to_owned(), r.to_owned());
        // "abc" splits as a|bc (ranks 0, 4) and ab|c (ranks 3, 2): by the left half's rank.
        assert_eq!(
            merges,
            [
                pair("a", "b"),
                pair("b", "c"),
                pair("a", "bc"),
                pair("ab", "c")
            ]
        );
    }

    #[test]
    fn rank_files_with_gaps_or_repeats_are_refused() {
        assert!(read_ranks("YQ== 0\nYg== 2\n")
            .unwrap_err()
            .contains("rank 1"));
        assert!(read_ranks("YQ== 0\nYQ== 1\n")
            .unwrap_err()
            .contains("repeats"));
        assert!(read_ranks("YQ== 0\nYg== 0\n")
            .unwrap_err()
            .contains("twice"));
        assert!(read_ranks("YQ==\n").unwrap_err().contains("line 1"));
        assert_eq!(
            read_ranks("YQ== 1\n\nYg== 0\n").unwrap(),
            [b"b".to_vec(), b"a".to_vec()]
        );
    }
}
