//! `emilio_qwen::tokenizer`: a tokenizer rebuilt from GGUF metadata.
//!
//! - Against an independent reference: the synthetic `tokenizer.json` (Qwen2's pre-tokenizer,
//!   byte-level BPE with merges and special tokens). Its GGUF metadata (`gguf_metadata`, written
//!   and read back through Candle's GGUF writer and reader) rebuilt by `from_gguf` must encode
//!   every one of many seeded random strings to the same ids and decode them back.
//! - On a real file, the SmolLM2-135M-Instruct GGUF (`EMILIO_SMOLLM2_GGUF`, see
//!   `emilio_qwen::test_models::smollm2_gguf`; these tests fail when it is missing): its chat
//!   tokens are single ids, text round-trips, digits split one by one, and known ids.
//! - Malformed metadata: each error names the key and the file.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use emilio_qwen::synthetic::{self, ENDOFTEXT, IM_END, IM_START};
use emilio_qwen::tokenizer::{
    self, from_gguf, gguf_metadata, special_tokens, GgufSpecialTokens, TokenType, PRE_TOKENIZERS,
};
use rand::Rng;
use tokenizers::Tokenizer;

fn map(entries: Vec<(String, Value)>) -> HashMap<String, Value> {
    entries.into_iter().collect()
}

/// The metadata written to a GGUF (no tensors) and read back, as a loader sees it.
fn through_gguf_file(entries: &[(String, Value)]) -> HashMap<String, Value> {
    let refs: Vec<(&str, &Value)> = entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &refs, &[]).expect("writing the GGUF");
    buf.set_position(0);
    gguf_file::Content::read(&mut buf)
        .expect("reading the GGUF back")
        .metadata
}

fn synthetic_metadata() -> HashMap<String, Value> {
    let reference = synthetic::tokenizer().unwrap();
    map(gguf_metadata(&reference, "qwen2").unwrap())
}

fn err(md: &HashMap<String, Value>) -> String {
    match from_gguf(md, "test.gguf") {
        Ok(_) => panic!("from_gguf accepted malformed metadata"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "the error does not name {w:?}: {msg}");
    }
}

/// A random string of pieces that exercise every branch of a byte-level BPE split: words the
/// merges know, random ASCII, digit runs, whitespace runs and newlines, contractions in both
/// cases, accented and CJK letters, emoji (with modifiers and ZWJ), and special tokens, whole
/// or broken, inside the text.
fn random_text(r: &mut impl Rng) -> String {
    const PIECES: &[&str] = &[
        "the",
        " the",
        "The",
        " and",
        "hello",
        " world",
        "model",
        " token",
        "ing",
        "Qwen",
        "don't",
        "DON'T",
        "we've",
        "I'm",
        "they'll",
        "she'd",
        "it's",
        "'re",
        "'S",
        "  ",
        "    ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        " \n ",
        "\u{a0}",
        "\u{3000}",
        "é",
        "déjà vu",
        "naïve",
        "日本語",
        "中文",
        "한국어",
        "Ελληνικά",
        "🦀",
        "👍🏽",
        "👨‍👩‍👧",
        "∑",
        "—",
        "…",
        "½",
        "٣",
        IM_START,
        IM_END,
        ENDOFTEXT,
        "<|im_",
        "|>",
        "<|",
        "<|im_start",
        "!",
        "?!",
        "...",
        "((",
        "\"",
        "#",
        "$",
        "%",
        "&&",
        "*",
        "+=",
        "->",
        "::",
        "@",
        "\\",
        "^",
        "_",
        "`",
        "{}",
        "~",
    ];
    let n = r.random_range(0..24);
    let mut s = String::new();
    for _ in 0..n {
        match r.random_range(0..10) {
            0 => {
                // A run of digits, 1 to 12 long.
                for _ in 0..r.random_range(1..13) {
                    s.push(char::from(b'0' + r.random_range(0..10u8)));
                }
            }
            1 => {
                // Random printable ASCII.
                for _ in 0..r.random_range(1..8) {
                    s.push(char::from(r.random_range(0x20..0x7fu8)));
                }
            }
            2 => {
                // A whitespace run.
                for _ in 0..r.random_range(1..6) {
                    s.push([' ', ' ', '\t', '\n', '\r'][r.random_range(0..5)]);
                }
            }
            3 => {
                // Any Unicode scalar value.
                if let Some(c) = char::from_u32(r.random_range(0xa0..0x2_0000)) {
                    s.push(c);
                }
            }
            _ => s.push_str(PIECES[r.random_range(0..PIECES.len())]),
        }
    }
    s
}

fn ids(tok: &Tokenizer, s: &str, add_special: bool) -> Vec<u32> {
    tok.encode(s, add_special)
        .unwrap_or_else(|e| panic!("encoding {s:?}: {e}"))
        .get_ids()
        .to_vec()
}

#[test]
fn synthetic_tokenizer_round_trips_through_gguf_metadata() {
    let reference = synthetic::tokenizer().unwrap();
    let entries = gguf_metadata(&reference, "qwen2").unwrap();
    let md = through_gguf_file(&entries);
    let tok = from_gguf(&md, "synthetic.gguf").unwrap();
    assert_eq!(tok.get_vocab_size(true), reference.get_vocab_size(true));

    let mut r = emilio_tests::rng(0x70c);
    let mut total_ids = 0;
    let mut cases: Vec<String> = [
        "",
        "Hello, world! <|im_end|>",
        "don't DON'T we'VE",
        "12345 678",
        "  leading and trailing  ",
        "a\n\n\nb\r\n\tc",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "🦀 日本語 déjà",
    ]
    .map(String::from)
    .to_vec();
    cases.extend((0..1500).map(|_| random_text(&mut r)));
    for s in &cases {
        for add_special in [false, true] {
            let want = ids(&reference, s, add_special);
            let got = ids(&tok, s, add_special);
            assert_eq!(got, want, "{s:?} (add_special_tokens {add_special})");
        }
        let got = ids(&tok, s, false);
        total_ids += got.len();
        assert_eq!(&tok.decode(&got, false).unwrap(), s, "decode of {s:?}");
        assert_eq!(
            tok.decode(&got, true).unwrap(),
            reference.decode(&got, true).unwrap(),
            "decode of {s:?} without special tokens"
        );
    }
    // The strings are not trivially short, and the merges are used.
    assert!(total_ids > 20 * cases.len(), "{total_ids} ids");
    assert_eq!(ids(&tok, "the", false).len(), 1);

    // The special tokens are one id each, special (dropped by decode), as in tokenizer.json.
    for s in [ENDOFTEXT, IM_START, IM_END] {
        let id = synthetic::tokenizer_special_id(s);
        assert_eq!(ids(&tok, s, false), vec![id], "{s}");
        assert_eq!(tok.decode(&[id], true).unwrap(), "", "{s}");
    }
}

#[test]
fn gguf_metadata_writes_the_gguf_keys_and_types() {
    let md = synthetic_metadata();
    assert!(matches!(&md[tokenizer::MODEL_KEY], Value::String(s) if s == "gpt2"));
    assert!(matches!(&md[tokenizer::PRE_KEY], Value::String(s) if s == "qwen2"));
    let Value::Array(tokens) = &md[tokenizer::TOKENS_KEY] else {
        panic!("tokens is not an array")
    };
    assert_eq!(tokens.len(), synthetic::tokenizer_size());
    assert!(tokens.iter().all(|t| matches!(t, Value::String(_))));
    let Value::Array(types) = &md[tokenizer::TOKEN_TYPE_KEY] else {
        panic!("token_type is not an array")
    };
    assert_eq!(types.len(), tokens.len());
    for (id, t) in types.iter().enumerate() {
        let special = [ENDOFTEXT, IM_START, IM_END]
            .iter()
            .any(|s| synthetic::tokenizer_special_id(s) as usize == id);
        let want = if special {
            TokenType::Control
        } else {
            TokenType::Normal
        };
        assert!(
            matches!(t, Value::I32(x) if *x == want as i32),
            "id {id}: {t:?}"
        );
    }
    // The 256 byte tokens come first, then the merged ones (one per merge, in rank order).
    let Value::Array(merges) = &md[tokenizer::MERGES_KEY] else {
        panic!("merges is not an array")
    };
    assert_eq!(merges.len(), tokens.len() - 256 - 3);
    for (rank, m) in merges.iter().enumerate() {
        let Value::String(m) = m else {
            panic!("merge {rank}: {m:?}")
        };
        let (a, b) = m.split_once(' ').unwrap();
        assert!(
            matches!(&tokens[256 + rank], Value::String(t) if *t == format!("{a}{b}")),
            "merge {rank} {m:?}"
        );
    }
    assert!(gguf_metadata(&synthetic::tokenizer().unwrap(), "nonsense")
        .unwrap_err()
        .to_string()
        .contains("nonsense"));
}

#[test]
fn special_tokens_read_and_write() {
    let mut md = synthetic_metadata();
    let im_end = synthetic::tokenizer_special_id(IM_END);
    let eot = synthetic::tokenizer_special_id(ENDOFTEXT);
    let special = GgufSpecialTokens {
        bos: Some(eot),
        eos: Some(im_end),
        eot: Some(eot),
        pad: Some(eot),
        add_bos: false,
        ..Default::default()
    };
    md.extend(special.metadata());
    let md = through_gguf_file(&md.into_iter().collect::<Vec<_>>());
    let read = special_tokens(&md, "x.gguf").unwrap();
    assert_eq!(read.eos, Some(im_end));
    assert_eq!(read.eos_token.as_deref(), Some(IM_END));
    assert_eq!(read.bos_token.as_deref(), Some(ENDOFTEXT));
    assert_eq!(
        (read.eot, read.pad, read.add_bos),
        (Some(eot), Some(eot), false)
    );
    assert_eq!(read.stop_ids(), vec![im_end, eot]);

    // add_bos_token = true prepends BOS, once per sequence.
    let mut with_bos = md.clone();
    with_bos.insert(tokenizer::ADD_BOS_KEY.into(), Value::Bool(true));
    let tok = from_gguf(&with_bos, "x.gguf").unwrap();
    let plain = from_gguf(&md, "x.gguf").unwrap();
    let s = "hello world";
    let mut want = vec![eot];
    want.extend(ids(&plain, s, true));
    assert_eq!(ids(&tok, s, true), want);
    assert_eq!(ids(&tok, s, false), ids(&plain, s, false));

    // An id outside the vocabulary, or add_bos without a BOS.
    let mut bad = md.clone();
    bad.insert(tokenizer::EOS_KEY.into(), Value::U32(1 << 20));
    assert_names(&err(&bad), &["test.gguf", tokenizer::EOS_KEY, "1048576"]);
    let mut bad = with_bos.clone();
    bad.remove(tokenizer::BOS_KEY);
    assert_names(
        &err(&bad),
        &["test.gguf", tokenizer::ADD_BOS_KEY, tokenizer::BOS_KEY],
    );
}

#[test]
fn malformed_metadata_is_a_clear_error() {
    let md = synthetic_metadata();
    let with = |key: &str, v: Option<Value>| {
        let mut m = md.clone();
        match v {
            Some(v) => m.insert(key.to_string(), v),
            None => m.remove(key),
        };
        m
    };
    let s = |x: &str| Value::String(x.to_string());

    // The vocabulary type.
    let e = err(&with(tokenizer::MODEL_KEY, Some(s("llama"))));
    assert_names(
        &e,
        &["test.gguf", tokenizer::MODEL_KEY, "llama", "SentencePiece"],
    );
    let e = err(&with(tokenizer::MODEL_KEY, Some(s("bert"))));
    assert_names(&e, &["test.gguf", tokenizer::MODEL_KEY, "bert"]);
    assert_names(
        &err(&with(tokenizer::MODEL_KEY, None)),
        &[tokenizer::MODEL_KEY],
    );

    // The pre-tokenizer: missing or unknown, never guessed.
    for v in [None, Some(s("starcoder-9000"))] {
        let e = err(&with(tokenizer::PRE_KEY, v));
        assert_names(
            &e,
            &["test.gguf", tokenizer::PRE_KEY, "\"qwen2\"", "\"smollm\""],
        );
    }
    assert_names(
        &err(&with(tokenizer::PRE_KEY, Some(s("starcoder-9000")))),
        &["starcoder-9000"],
    );
    assert_names(
        &err(&with(tokenizer::PRE_KEY, Some(Value::U32(2)))),
        &[tokenizer::PRE_KEY, "string"],
    );

    // Tokens: missing, ill-typed, an ill-typed entry, a repeat.
    assert_names(
        &err(&with(tokenizer::TOKENS_KEY, None)),
        &[tokenizer::TOKENS_KEY],
    );
    assert_names(
        &err(&with(tokenizer::TOKENS_KEY, Some(s("a b c")))),
        &[tokenizer::TOKENS_KEY, "array"],
    );
    let Value::Array(tokens) = &md[tokenizer::TOKENS_KEY] else {
        unreachable!()
    };
    let mut bad = tokens.clone();
    bad[7] = Value::U8(7);
    assert_names(
        &err(&with(tokenizer::TOKENS_KEY, Some(Value::Array(bad)))),
        &["tokenizer.ggml.tokens[7]"],
    );
    let mut bad = tokens.clone();
    bad[300] = bad[65].clone();
    assert_names(
        &err(&with(tokenizer::TOKENS_KEY, Some(Value::Array(bad)))),
        &[tokenizer::TOKENS_KEY, "65", "300", "twice"],
    );

    // Token types: another count than the tokens, a non-integer.
    let Value::Array(types) = &md[tokenizer::TOKEN_TYPE_KEY] else {
        unreachable!()
    };
    let short = Value::Array(types[1..].to_vec());
    assert_names(
        &err(&with(tokenizer::TOKEN_TYPE_KEY, Some(short))),
        &[
            tokenizer::TOKEN_TYPE_KEY,
            &tokens.len().to_string(),
            &(tokens.len() - 1).to_string(),
        ],
    );
    let mut bad = types.clone();
    bad[3] = s("1");
    assert_names(
        &err(&with(tokenizer::TOKEN_TYPE_KEY, Some(Value::Array(bad)))),
        &["tokenizer.ggml.token_type[3]"],
    );
    // A vocab_size that disagrees with the tokens.
    let mut bad = with("general.architecture", Some(s("qwen2")));
    bad.insert("qwen2.vocab_size".into(), Value::U32(7));
    assert_names(&err(&bad), &["qwen2.vocab_size", tokenizer::TOKENS_KEY]);

    // Merges: missing, not "a b", naming an unknown token, making an unknown token.
    assert_names(
        &err(&with(tokenizer::MERGES_KEY, None)),
        &[tokenizer::MERGES_KEY],
    );
    let Value::Array(merges) = &md[tokenizer::MERGES_KEY] else {
        unreachable!()
    };
    for (merge, words) in [
        ("nospace", vec!["nospace", "space"]),
        ("t zzzz", vec!["zzzz", "not in"]),
        ("h Ġ", vec!["hĠ", "not in"]),
    ] {
        let mut bad = merges.clone();
        bad[2] = s(merge);
        let e = err(&with(tokenizer::MERGES_KEY, Some(Value::Array(bad))));
        assert_names(&e, &["test.gguf", "tokenizer.ggml.merges[2]"]);
        assert_names(&e, &words);
    }
}

#[test]
fn every_supported_pre_tokenizer_builds_and_round_trips() {
    let md = synthetic_metadata();
    let text = "Hello world! 1234567 don't\n\n  x 🦀";
    for pre in PRE_TOKENIZERS {
        let mut m = md.clone();
        m.insert(tokenizer::PRE_KEY.into(), Value::String(pre.to_string()));
        // Llama 3's default is to prepend BOS, and this vocabulary has no BOS.
        m.insert(tokenizer::ADD_BOS_KEY.into(), Value::Bool(false));
        let tok = from_gguf(&m, "x.gguf").unwrap_or_else(|e| panic!("{pre}: {e}"));
        let got = ids(&tok, text, false);
        assert_eq!(tok.decode(&got, false).unwrap(), text, "{pre}");
    }
    // The digit rules differ: Qwen2 and SmolLM split single digits, Llama 3 threes, GPT-2 runs.
    let digit_pieces = |pre: &str| {
        let mut m = md.clone();
        m.insert(tokenizer::PRE_KEY.into(), Value::String(pre.to_string()));
        m.insert(tokenizer::ADD_BOS_KEY.into(), Value::Bool(false));
        let tok = from_gguf(&m, "x.gguf").unwrap();
        let pre_tok = tok.get_pre_tokenizer().unwrap();
        let mut p = tokenizers::PreTokenizedString::from("1234567");
        tokenizers::PreTokenizer::pre_tokenize(pre_tok, &mut p).unwrap();
        p.get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .len()
    };
    assert_eq!(digit_pieces("qwen2"), 7);
    assert_eq!(digit_pieces("smollm"), 7);
    assert_eq!(digit_pieces("llama3"), 3);
    assert_eq!(digit_pieces("gpt2"), 1);
    // llama.cpp's default: runs, then threes.
    assert_eq!(digit_pieces("default"), 3);

    // Llama 3 prepends BOS by default, so without a BOS id (and no add_bos_token) it is an
    // error that says so.
    let mut m = md.clone();
    m.insert(tokenizer::PRE_KEY.into(), Value::String("llama-bpe".into()));
    assert_names(
        &err(&m),
        &["test.gguf", tokenizer::BOS_KEY, tokenizer::ADD_BOS_KEY],
    );
}

// ---------------------------------------------------------------------------------------------
// The SmolLM2-135M-Instruct GGUF
// ---------------------------------------------------------------------------------------------

fn smollm2_metadata() -> HashMap<String, Value> {
    let path = emilio_qwen::test_models::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let mut f = std::fs::File::open(&path).unwrap();
    gguf_file::Content::read(&mut f)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .metadata
}

fn smollm2() -> Tokenizer {
    from_gguf(&smollm2_metadata(), "SmolLM2-135M-Instruct.Q4_1.gguf").unwrap()
}

#[test]
fn smollm2_chat_tokens_are_single_special_ids() {
    let md = smollm2_metadata();
    let tok = from_gguf(&md, "smollm2").unwrap();
    assert_eq!(tok.get_vocab_size(true), 49152);
    assert_eq!(ids(&tok, "<|im_start|>", false), vec![1]);
    assert_eq!(ids(&tok, "<|im_end|>", false), vec![2]);
    assert_eq!(ids(&tok, "<|endoftext|>", false), vec![0]);
    let chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let got = ids(&tok, chat, true);
    assert_eq!(got[0], 1);
    assert_eq!(got.iter().filter(|&&i| i == 1).count(), 2, "{got:?}");
    assert_eq!(got.iter().filter(|&&i| i == 2).count(), 1, "{got:?}");
    assert_eq!(tok.decode(&got, false).unwrap(), chat);
    assert_eq!(
        tok.decode(&got, true).unwrap(),
        "user\nWhat is 2+2?\nassistant\n"
    );
    // add_bos_token is false: encoding adds nothing.
    assert_eq!(ids(&tok, "Hi", true), ids(&tok, "Hi", false));

    let special = special_tokens(&md, "smollm2").unwrap();
    assert_eq!(special.bos, Some(1));
    assert_eq!(special.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(special.eos, Some(2));
    assert_eq!(special.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(special.pad, Some(2));
    assert!(!special.add_bos);
    assert_eq!(special.stop_ids(), vec![2]);
    let Value::String(template) = &md[tokenizer::CHAT_TEMPLATE_KEY] else {
        panic!("no chat template")
    };
    assert!(template.contains("You are a helpful AI assistant named SmolLM"));
}

#[test]
fn smollm2_round_trips_text_and_splits_digits() {
    let tok = smollm2();
    let mut r = emilio_tests::rng(0x5a01);
    let mut cases: Vec<String> = [
        "What is the capital of France?",
        "  multiple   spaces\tand\ttabs\n\n\nnewlines\r\n",
        "Ünïcödé: 日本語, emoji 🦀👍🏽, math ∑x² ≤ ½",
        "fn main() { println!(\"{}\", 42); }",
        "don't won't we'll I'M",
    ]
    .map(String::from)
    .to_vec();
    cases.extend((0..300).map(|_| random_text(&mut r)));
    for s in &cases {
        let got = ids(&tok, s, false);
        assert_eq!(&tok.decode(&got, false).unwrap(), s, "{got:?}");
    }

    let q = ids(&tok, "What is the capital of France?", false);
    assert!((6..=9).contains(&q.len()), "{q:?}");
    // smollm splits every digit alone.
    let digits = ids(&tok, "12345", false);
    assert_eq!(digits.len(), 5, "{digits:?}");
    for (d, &id) in "12345".chars().zip(&digits) {
        assert_eq!(tok.id_to_token(id).as_deref(), Some(d.to_string().as_str()));
    }
}

/// Ids of SmolLM's tokenizer for a few strings, as a separate implementation (a third-party
/// GGUF tokenizer's self-check for `tokenizer.ggml.pre = "smollm"`) expects them.
#[test]
fn smollm2_known_ids() {
    let tok = smollm2();
    let cases: &[(&str, &[u32])] = &[
        ("Hello, we can use", &[19556, 28, 392, 416, 722]),
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        (
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            &[
                2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
                19712, 8182,
            ],
        ),
        ("\n", &[198]),
        ("Hello world! 123", &[19556, 905, 17, 216, 33, 34, 35]),
        (
            "Café déjà vu.",
            &[51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
        ),
        ("  multiple   spaces", &[216, 2701, 256, 5600]),
    ];
    for (s, want) in cases {
        assert_eq!(ids(&tok, s, false), *want, "{s:?}");
    }
}

#[test]
fn smollm2_missing_or_unknown_pre_is_an_error() {
    let md = smollm2_metadata();
    let mut m = md.clone();
    m.remove(tokenizer::PRE_KEY);
    let e = from_gguf(&m, "SmolLM2.gguf").unwrap_err().to_string();
    assert_names(&e, &["SmolLM2.gguf", tokenizer::PRE_KEY, "\"smollm\""]);
    let mut m = md;
    m.insert(tokenizer::PRE_KEY.into(), Value::String("smollm3".into()));
    let e = from_gguf(&m, "SmolLM2.gguf").unwrap_err().to_string();
    assert_names(&e, &["SmolLM2.gguf", "smollm3", "\"qwen2\""]);
}
