//! Streaming detokenization and stop strings, checked by property: for any
//! sequence of ids the streamed pieces add up to the one-shot decode, no
//! piece ends in a half character, and stop strings cut the text where a
//! one-shot scan would, however the text is split into pieces.
//!
//! `tokenizers`' own `DecodeStream` is compared with ours: the same pieces
//! where it applies, and the three cases that make us keep ours.
//!
//! Two tokenizers: the embedded default model's byte-level BPE
//! (models/tiny-deepseek-v3), and a Llama-style SentencePiece BPE with byte
//! fallback built here, whose decoder strips a leading space.

mod common;

use std::sync::OnceLock;

use ferroseek_engine::{IncrementalDecoder, SeqText, StopMatcher, StopOutcome, Tokenizer};
use proptest::prelude::*;
use serde_json::json;

fn byte_level() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = common::repo_dir().join("models/tiny-deepseek-v3");
        Tokenizer::from_dir(dir)
            .unwrap_or_else(|e| panic!("loading the tiny model's tokenizer: {e}"))
    })
}

/// A SentencePiece-style BPE: `▁` for spaces, bytes as `<0xNN>` tokens,
/// and a decoder that drops the first leading space.
fn sentencepiece() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let special = |id: u32, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert((*t).into(), json!(i));
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), json!(vocab.len()));
        }
        let pieces = [
            "▁", "a", "b", "h", "e", "l", "o", "é", "▁a", "ab", "▁ab", "he", "ll", "hell", "hello",
            "▁hello",
        ];
        for p in pieces {
            vocab.insert(p.into(), json!(vocab.len()));
        }
        let merges = [
            "▁ a",
            "a b",
            "▁ ab",
            "h e",
            "l l",
            "he ll",
            "hell o",
            "▁ hello",
        ];
        let config = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        let inner = tokenizers::Tokenizer::from_bytes(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("building the sentencepiece tokenizer: {e}"));
        Tokenizer::from(inner)
    })
}

/// Ids for the SentencePiece tokenizer: a random non-byte token, or the
/// byte tokens of one character (random runs of byte tokens that are not
/// valid UTF-8 decode differently in one shot; see
/// `invalid_byte_fallback_run_does_not_stall_the_stream`).
fn sentencepiece_run() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        prop_oneof![0u32..3, 259u32..275].prop_map(|id| vec![id]),
        any::<char>().prop_map(|c| {
            let mut buf = [0u8; 4];
            c.encode_utf8(&mut buf)
                .bytes()
                .map(|b| 3 + u32::from(b))
                .collect()
        }),
    ]
}

/// Streams `ids` one at a time; returns the pieces (the last from `finish`).
fn stream(tok: &Tokenizer, decoder: &mut IncrementalDecoder, ids: &[u32]) -> Vec<String> {
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(piece) = decoder
            .push(tok, id)
            .unwrap_or_else(|e| panic!("push: {e}"))
        {
            pieces.push(piece);
        }
    }
    pieces.extend(
        decoder
            .finish(tok)
            .unwrap_or_else(|e| panic!("finish: {e}")),
    );
    pieces
}

fn check_stream(
    tok: &Tokenizer,
    ids: &[u32],
    skip_special_tokens: bool,
) -> Result<(), TestCaseError> {
    let whole = tok
        .decode(ids, skip_special_tokens)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let pieces = stream(tok, &mut IncrementalDecoder::new(skip_special_tokens), ids);
    prop_assert_eq!(pieces.concat(), whole);
    // Only the final flush may end in U+FFFD (an incomplete last character).
    if let Some((_, before_last)) = pieces.split_last() {
        for piece in before_last {
            prop_assert!(
                !piece.ends_with('\u{FFFD}'),
                "piece {:?} ends in a replacement char",
                piece
            );
        }
    }
    Ok(())
}

/// Text mixing ASCII, accents, CJK, emoji (4-byte and joined sequences) and spaces.
fn unicode_text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "a",
        "b",
        "hello",
        " ",
        "  ",
        "\n",
        "é",
        "ß",
        "中",
        "文",
        "語",
        "한",
        "😀",
        "👍🏽",
        "👨\u{200d}👩\u{200d}👧",
        "🇫🇷",
        "<｜end▁of▁sentence｜>",
        "<think>",
        "123",
        ".",
    ]);
    prop::collection::vec(
        prop_oneof![atoms.prop_map(str::to_owned), "\\PC{1,3}"],
        0..24,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn byte_level_stream_of_random_ids_adds_up_to_the_full_decode(
        ids in prop::collection::vec(0u32..4000, 0..40),
        skip in any::<bool>(),
    ) {
        check_stream(byte_level(), &ids, skip)?;
    }

    #[test]
    fn byte_level_stream_of_encoded_text_gives_the_text_back(text in unicode_text(), skip in any::<bool>()) {
        let tok = byte_level();
        let ids = tok.encode(&text, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_stream(tok, &ids, skip)?;
        if !skip {
            let pieces = stream(tok, &mut IncrementalDecoder::new(false), &ids);
            prop_assert_eq!(pieces.concat(), text);
        }
    }

    #[test]
    fn stream_after_a_prompt_continues_its_text(prompt in unicode_text(), text in unicode_text()) {
        let tok = byte_level();
        let prompt_ids = tok.encode(&prompt, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ids = tok.encode(&text, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let pieces = stream(tok, &mut IncrementalDecoder::with_prompt(&prompt_ids, false), &ids);
        prop_assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn sentencepiece_stream_of_random_ids_adds_up_to_the_full_decode(
        runs in prop::collection::vec(sentencepiece_run(), 0..30),
        skip in any::<bool>(),
    ) {
        check_stream(sentencepiece(), &runs.concat(), skip)?;
    }

    #[test]
    fn sentencepiece_stream_of_encoded_text_adds_up(text in unicode_text()) {
        let tok = sentencepiece();
        let ids = tok.encode(&text, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_stream(tok, &ids, false)?;
    }
}

#[test]
fn multibyte_character_split_over_tokens_is_held_back() {
    let tok = byte_level();
    let ids = tok.encode("a😀", false).unwrap_or_default();
    assert!(
        ids.len() >= 3,
        "the emoji should take several byte tokens: {ids:?}"
    );
    let mut decoder = IncrementalDecoder::new(false);
    let mut out = Vec::new();
    for &id in &ids {
        out.push(decoder.push(tok, id).unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(out.first(), Some(&Some("a".to_owned())));
    assert!(out[1..out.len() - 1].iter().all(Option::is_none), "{out:?}");
    assert_eq!(out.last(), Some(&Some("😀".to_owned())));
}

#[test]
fn sentencepiece_spaces_survive_streaming() {
    let tok = sentencepiece();
    let ids = tok.encode("hello ab a", false).unwrap_or_default();
    let pieces = stream(tok, &mut IncrementalDecoder::new(false), &ids);
    assert_eq!(pieces.concat(), "hello ab a");
    assert_eq!(
        pieces.get(1).map(String::as_str),
        Some(" a"),
        "the space the decoder strips at the start stays: {pieces:?}"
    );
}

#[test]
fn invalid_byte_fallback_run_does_not_stall_the_stream() {
    let tok = sentencepiece();
    let byte = |b: u8| 3 + u32::from(b);
    let hello = tok.token_to_id("▁hello").unwrap_or_default();
    // "\0", then a lone continuation byte, then more text.
    let ids = [byte(0), byte(0x80), hello];
    let pieces = stream(tok, &mut IncrementalDecoder::new(false), &ids);
    // One-shot decoding turns the whole byte run into U+FFFD; the stream
    // had already sent the NUL and keeps going.
    assert_eq!(
        tok.decode(&ids, false).unwrap_or_default(),
        "\u{FFFD}\u{FFFD} hello"
    );
    assert_eq!(pieces.concat(), "\0\u{FFFD} hello");
}

/// Streams `ids` through `tokenizers`' own `DecodeStream`: the pieces, or
/// the error it stopped at.
fn decode_stream(
    tok: &Tokenizer,
    skip_special_tokens: bool,
    ids: &[u32],
) -> Result<Vec<String>, String> {
    let mut stream = tok.inner().decode_stream(skip_special_tokens);
    let mut pieces = Vec::new();
    for &id in ids {
        pieces.extend(stream.step(id).map_err(|e| e.to_string())?);
    }
    Ok(pieces)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Where `DecodeStream` applies (no prompt before the output, every
    /// character complete at the end, no U+FFFD of its own: it holds one
    /// back as if incomplete) it gives our text, piece for piece.
    #[test]
    fn decode_stream_gives_the_same_pieces_on_complete_text(text in unicode_text(), skip in any::<bool>()) {
        prop_assume!(!text.contains('\u{FFFD}'));
        for tok in [byte_level(), sentencepiece()] {
            let ids = tok.encode(&text, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ours = stream(tok, &mut IncrementalDecoder::new(skip), &ids);
            let theirs = decode_stream(tok, skip, &ids).map_err(TestCaseError::fail)?;
            prop_assert_eq!(ours, theirs);
        }
    }
}

/// Why we keep our decoder (1/3): `DecodeStream` cannot start after a
/// prompt, so a SentencePiece decoder strips the space that starts the
/// first generated token, and the client's text runs into the prompt's.
#[test]
fn decode_stream_drops_the_first_space_after_a_prompt() {
    let tok = sentencepiece();
    let prompt = tok.encode("hello", false).unwrap_or_default();
    let ids = tok.encode(" ab", false).unwrap_or_default();
    let ids = &ids[1..]; // The encoding's own leading `▁` belongs to the prompt's side.
    let ours = stream(
        tok,
        &mut IncrementalDecoder::with_prompt(&prompt, false),
        ids,
    );
    let whole = tok
        .decode(&[prompt.as_slice(), ids].concat(), false)
        .unwrap_or_default();
    assert_eq!(whole, "hello ab");
    assert_eq!(ours.concat(), " ab");
    assert_eq!(
        decode_stream(tok, false, ids).map(|p| p.concat()),
        Ok("ab".to_owned())
    );
}

/// Why we keep our decoder (2/3): `DecodeStream` has no end of stream, so a
/// sequence that stops inside a character loses its last bytes, where the
/// one-shot decode (and ours) ends in U+FFFD. (The same holds for a text
/// that ends in a U+FFFD of its own.)
#[test]
fn decode_stream_drops_an_unfinished_last_character() {
    let tok = byte_level();
    let ids = tok.encode("a😀", false).unwrap_or_default();
    let ids = &ids[..ids.len() - 1];
    let whole = tok.decode(ids, false).unwrap_or_default();
    assert!(
        whole.starts_with('a') && whole.ends_with('\u{FFFD}'),
        "{whole:?}"
    );
    let ours = stream(tok, &mut IncrementalDecoder::new(false), ids);
    assert_eq!(ours.concat(), whole);
    assert_eq!(decode_stream(tok, false, ids), Ok(vec!["a".to_owned()]));
}

/// Why we keep our decoder (3/3): where the decoder rewrites text already
/// sent (a byte-fallback run that is not valid UTF-8), `DecodeStream`
/// fails for good; ours goes on (see
/// `invalid_byte_fallback_run_does_not_stall_the_stream`).
#[test]
fn decode_stream_fails_where_the_decoder_rewrites_sent_text() {
    let tok = sentencepiece();
    let byte = |b: u8| 3 + u32::from(b);
    let hello = tok.token_to_id("▁hello").unwrap_or_default();
    let ids = [byte(0), byte(0x80), hello];
    assert!(decode_stream(tok, false, &ids).is_err());
    let ours = stream(tok, &mut IncrementalDecoder::new(false), &ids);
    assert_eq!(ours.concat(), "\0\u{FFFD} hello");
}

/// The worker's per-sequence text: a possible stop string is held back while
/// it might still match, and comes out when the sequence ends without it.
#[test]
fn seq_text_releases_a_held_stop_prefix_at_the_end() {
    let tok = byte_level();
    let ids = tok.encode("hello wo", false).unwrap_or_default();
    let mut text = SeqText::new(&[], false, &["world".to_owned()]);
    let mut out = String::new();
    for &id in &ids {
        match text.push(tok, id) {
            Ok(StopOutcome::Continue(t)) => out.push_str(&t),
            other => panic!("no stop string completes: {other:?}"),
        }
    }
    assert_eq!(out, "hello ");
    assert_eq!(text.finish(tok), StopOutcome::Continue("wo".to_owned()));
    let mut text = SeqText::new(&[], false, &["lo w".to_owned()]);
    let stopped = ids.iter().find_map(|&id| match text.push(tok, id) {
        Ok(StopOutcome::Stopped { stop, .. }) => Some(stop),
        _ => None,
    });
    assert_eq!(stopped.as_deref(), Some("lo w"));
}

/// One-shot reference: cut at the stop string that completes first (the
/// longest of those completing at the same point).
fn cut_at_first_stop(text: &str, stops: &[String]) -> (String, bool) {
    for (end, _) in text.char_indices().skip(1).chain([(text.len(), ' ')]) {
        let hit = stops
            .iter()
            .filter(|s| !s.is_empty() && text[..end].ends_with(s.as_str()))
            .max_by_key(|s| s.len());
        if let Some(stop) = hit {
            return (text[..end - stop.len()].to_owned(), true);
        }
    }
    (text.to_owned(), false)
}

fn stop_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "é", "😀", "</", "s>"]),
        0..30,
    )
    .prop_map(|v| v.concat())
}

/// Split `text` into pieces at the given (char-boundary-adjusted) points.
fn split_at(text: &str, cuts: &[usize]) -> Vec<String> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            let mut c = c % (text.len() + 1);
            while !text.is_char_boundary(c) {
                c -= 1;
            }
            c
        })
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([text.len()]) {
        pieces.push(text[last..p].to_owned());
        last = p;
    }
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stop_matcher_cuts_where_a_one_shot_scan_does(
        text in stop_text(),
        stops in prop::collection::vec(stop_text(), 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let (want, want_stopped) = cut_at_first_stop(&text, &stops);
        let mut matcher = StopMatcher::new(stops.iter().cloned());
        let mut got = String::new();
        let mut stopped = false;
        for piece in split_at(&text, &cuts) {
            match matcher.push(&piece) {
                StopOutcome::Continue(t) => got.push_str(&t),
                StopOutcome::Stopped { text, stop } => {
                    prop_assert!(stops.contains(&stop));
                    got.push_str(&text);
                    stopped = true;
                    break;
                }
            }
            // What is out can never be taken back: it must be a prefix of the answer.
            prop_assert!(want.starts_with(&got), "emitted {:?}, answer {:?}", got, want);
        }
        if !stopped {
            got.push_str(&matcher.finish());
        }
        prop_assert_eq!(stopped, want_stopped);
        prop_assert_eq!(got, want);
    }
}
