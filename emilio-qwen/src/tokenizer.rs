//! A [`tokenizers::Tokenizer`] built from a GGUF file's `tokenizer.ggml.*` metadata, so a GGUF
//! model needs no `tokenizer.json` beside it.
//!
//! [`from_gguf`] rebuilds what llama.cpp runs for a byte-level BPE vocabulary
//! (`tokenizer.ggml.model = "gpt2"`), with Hugging Face's own components:
//! - the BPE model from `tokenizer.ggml.tokens` (the token of each id) and
//!   `tokenizer.ggml.merges` (`"a b"` strings, in rank order);
//! - `tokenizer.ggml.token_type`: control tokens (type 3) become special added tokens, so that
//!   `<|im_start|>` in a prompt is one id and `decode(.., true)` drops it; user-defined tokens
//!   (type 4) become added tokens that are not special;
//! - the pre-tokenizer named by `tokenizer.ggml.pre`, llama.cpp's name mapped to the Hugging Face
//!   pre-tokenizer of the model family (see [`PRE_TOKENIZERS`]); an unknown or missing name is an
//!   error, never a silent fallback, because a wrong split changes every id;
//! - a ByteLevel decoder, and a post-processor that prepends BOS only when
//!   `tokenizer.ggml.add_bos_token` says so.
//!
//! [`special_tokens`] reads BOS/EOS/EOT/padding ids (the stop tokens), and [`gguf_metadata`] is
//! the inverse of [`from_gguf`]: the metadata keys of an existing byte-level BPE tokenizer, which
//! [`crate::synthetic::gguf::write_gguf`] writes and the tests round-trip through [`from_gguf`].
//!
//! Every malformed input (a missing or ill-typed key, a token-type list of another length than
//! the vocabulary, a merge that names an unknown token, an unsupported model type) is an error
//! naming the key and the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{bail, Error, Result};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// `tokenizer.ggml.model`: the vocabulary type (`gpt2` is byte-level BPE).
pub const MODEL_KEY: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`: llama.cpp's name of the pre-tokenizer.
pub const PRE_KEY: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`: the token string of every id.
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.token_type`: the [`TokenType`] of every id, as `i32`.
pub const TOKEN_TYPE_KEY: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.merges`: the BPE merges, `"a b"`, highest priority first.
pub const MERGES_KEY: &str = "tokenizer.ggml.merges";
/// `tokenizer.ggml.bos_token_id`.
pub const BOS_KEY: &str = "tokenizer.ggml.bos_token_id";
/// `tokenizer.ggml.eos_token_id`.
pub const EOS_KEY: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.ggml.eot_token_id` (end of turn, where a model has one apart from EOS).
pub const EOT_KEY: &str = "tokenizer.ggml.eot_token_id";
/// `tokenizer.ggml.padding_token_id`.
pub const PAD_KEY: &str = "tokenizer.ggml.padding_token_id";
/// `tokenizer.ggml.add_bos_token`: whether encoding prepends BOS.
pub const ADD_BOS_KEY: &str = "tokenizer.ggml.add_bos_token";
/// `tokenizer.chat_template`: the Jinja chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// The vocabulary type [`from_gguf`] builds: byte-level BPE.
pub const GPT2_MODEL: &str = "gpt2";

/// llama.cpp's token types (`llama_token_type`), as `tokenizer.ggml.token_type` stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    /// An ordinary vocabulary entry.
    Normal = 1,
    /// The unknown token.
    Unknown = 2,
    /// A control token (`<|im_start|>`, `<|endoftext|>`): special, matched whole in text.
    Control = 3,
    /// A user-defined added token: matched whole in text, but not special.
    UserDefined = 4,
    /// An unused slot.
    Unused = 5,
    /// A byte token (`<0x0A>`, SentencePiece vocabularies).
    Byte = 6,
}

/// The pre-tokenizers [`from_gguf`] knows, with llama.cpp's names for each (its
/// `tokenizer.ggml.pre` values) and the Hugging Face pre-tokenizer it becomes:
///
/// | names | split (llama.cpp `llama-vocab.cpp`) | Hugging Face |
/// | --- | --- | --- |
/// | `qwen2`, `deepseek-r1-qwen` | Qwen2's regex (single digits) | Split(regex) + ByteLevel |
/// | `llama3`, `llama-v3`, `llama-bpe` | Llama 3's regex (digits in threes), merges ignored for whole-vocabulary words | Split(regex) + ByteLevel |
/// | `smollm` | every digit alone, then GPT-2's regex | Digits(individual) + ByteLevel(regex) |
/// | `gpt-2`, `gpt2` | GPT-2's regex | ByteLevel(regex) |
/// | `default` | llama.cpp's default: punctuation runs, GPT-2's regex, digit runs, digit triples | four Splits + ByteLevel |
pub const PRE_TOKENIZERS: &[&str] = &[
    "qwen2",
    "deepseek-r1-qwen",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "smollm",
    "gpt-2",
    "gpt2",
    "default",
];

/// Qwen2's split, as in its `tokenizer.json` (llama.cpp spells `(?i:'s|..)` out as `'[sS]|..`).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split, as in its `tokenizer.json`: Qwen2's with digits in runs of up to three.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split (the one Hugging Face's ByteLevel pre-tokenizer applies with `use_regex`).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp's default BPE split: four regexes, each splitting the pieces of the previous one.
const DEFAULT_REGEXES: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// A pre-tokenizer family (several llama.cpp names map to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pre {
    Qwen2,
    Llama3,
    Smollm,
    Gpt2,
    Default,
}

impl Pre {
    fn from_name(name: &str, source: &str) -> Result<Self> {
        Ok(match name {
            "qwen2" | "deepseek-r1-qwen" => Pre::Qwen2,
            "llama3" | "llama-v3" | "llama-bpe" => Pre::Llama3,
            "smollm" => Pre::Smollm,
            "gpt-2" | "gpt2" => Pre::Gpt2,
            "default" => Pre::Default,
            other => bail!(
                "{source}: unsupported {PRE_KEY} {other:?}: this loader knows {}",
                supported_pre()
            ),
        })
    }

    /// Llama 3's vocabularies take a whole pre-token that is in the vocabulary as one id
    /// (llama.cpp's `ignore_merges`, Hugging Face's `"ignore_merges": true`).
    fn ignore_merges(self) -> bool {
        self == Pre::Llama3
    }

    /// Whether BOS is prepended when the file has no `tokenizer.ggml.add_bos_token` (llama.cpp's
    /// default for the family).
    fn default_add_bos(self) -> bool {
        self == Pre::Llama3
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::msg(format!("pre-tokenizer regex {re:?}: {e}")))?;
            Ok(split.into())
        };
        // After an explicit split the byte-level step only maps bytes to characters.
        let bytes_only = ByteLevel::new(false, false, false).into();
        let with_regex = || ByteLevel::new(false, true, true);
        Ok(match self {
            Pre::Qwen2 => Sequence::new(vec![split(QWEN2_REGEX)?, bytes_only]).into(),
            Pre::Llama3 => Sequence::new(vec![split(LLAMA3_REGEX)?, bytes_only]).into(),
            Pre::Smollm => {
                Sequence::new(vec![Digits::new(true).into(), with_regex().into()]).into()
            }
            Pre::Gpt2 => with_regex().into(),
            Pre::Default => {
                let mut steps = DEFAULT_REGEXES
                    .iter()
                    .map(|re| split(re))
                    .collect::<Result<Vec<_>>>()?;
                steps.push(bytes_only);
                Sequence::new(steps).into()
            }
        })
    }
}

fn supported_pre() -> String {
    PRE_TOKENIZERS
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The special ids a GGUF names, with their strings: what a generation loop stops at and what
/// encoding prepends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GgufSpecialTokens {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// The token string of `bos`.
    pub bos_token: Option<String>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// The token string of `eos`.
    pub eos_token: Option<String>,
    /// `tokenizer.ggml.eot_token_id` (end of turn), where the file has one.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// Whether encoding prepends BOS (`tokenizer.ggml.add_bos_token`, else llama.cpp's default
    /// for the pre-tokenizer: true for Llama 3, false otherwise).
    pub add_bos: bool,
}

impl GgufSpecialTokens {
    /// The ids to stop generation at: EOS and EOT, without repeats.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for id in [self.eos, self.eot].into_iter().flatten() {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// These ids as GGUF metadata (`tokenizer.ggml.{bos,eos,eot,padding}_token_id` for each one
    /// set, and `tokenizer.ggml.add_bos_token`); the token strings are not written, they are the
    /// vocabulary's.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (key, id) in [
            (BOS_KEY, self.bos),
            (EOS_KEY, self.eos),
            (EOT_KEY, self.eot),
            (PAD_KEY, self.pad),
        ] {
            if let Some(id) = id {
                out.push((key.to_string(), Value::U32(id)));
            }
        }
        out.push((ADD_BOS_KEY.to_string(), Value::Bool(self.add_bos)));
        out
    }
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &str, source: &str) -> Result<&'a Value> {
    md.get(key)
        .ok_or_else(|| Error::msg(format!("{source}: the GGUF metadata has no {key}")))
}

fn get_string<'a>(md: &'a HashMap<String, Value>, key: &str, source: &str) -> Result<&'a str> {
    match get(md, key, source)? {
        Value::String(s) => Ok(s),
        v => bail!(
            "{source}: {key} should be a string, found a {:?}",
            v.value_type()
        ),
    }
}

fn get_array<'a>(md: &'a HashMap<String, Value>, key: &str, source: &str) -> Result<&'a [Value]> {
    match get(md, key, source)? {
        Value::Array(v) => Ok(v),
        v => bail!(
            "{source}: {key} should be an array, found a {:?}",
            v.value_type()
        ),
    }
}

/// An integer of any GGUF integer type, as `i64`.
fn as_int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x as i64,
        Value::I8(x) => x as i64,
        Value::U16(x) => x as i64,
        Value::I16(x) => x as i64,
        Value::U32(x) => x as i64,
        Value::I32(x) => x as i64,
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// An optional token id: absent is `None`; present, it must be an integer below `vocab`.
fn optional_id(
    md: &HashMap<String, Value>,
    key: &str,
    vocab: usize,
    source: &str,
) -> Result<Option<u32>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    match as_int(v) {
        Some(id) if id >= 0 && (id as u64) < vocab as u64 => Ok(Some(id as u32)),
        Some(id) => bail!("{source}: {key} = {id} is not an id of the {vocab}-token vocabulary"),
        None => bail!(
            "{source}: {key} should be an integer, found a {:?}",
            v.value_type()
        ),
    }
}

/// The vocabulary: every id's token string, checked to be unique.
fn tokens(md: &HashMap<String, Value>, source: &str) -> Result<Vec<String>> {
    let values = get_array(md, TOKENS_KEY, source)?;
    if values.is_empty() {
        bail!("{source}: {TOKENS_KEY} is empty")
    }
    let mut out = Vec::with_capacity(values.len());
    let mut seen = HashMap::with_capacity(values.len());
    for (id, v) in values.iter().enumerate() {
        let Value::String(s) = v else {
            bail!(
                "{source}: {TOKENS_KEY}[{id}] should be a string, found a {:?}",
                v.value_type()
            )
        };
        if let Some(first) = seen.insert(s.clone(), id) {
            bail!("{source}: {TOKENS_KEY} has {s:?} twice, at ids {first} and {id}")
        }
        out.push(s.clone());
    }
    Ok(out)
}

/// Every id's token type; all [`TokenType::Normal`] when the file has none (as llama.cpp reads
/// it).
fn token_types(md: &HashMap<String, Value>, n: usize, source: &str) -> Result<Vec<i32>> {
    if !md.contains_key(TOKEN_TYPE_KEY) {
        return Ok(vec![TokenType::Normal as i32; n]);
    }
    let values = get_array(md, TOKEN_TYPE_KEY, source)?;
    if values.len() != n {
        bail!(
            "{source}: {TOKEN_TYPE_KEY} has {} entries but {TOKENS_KEY} has {n} tokens",
            values.len()
        )
    }
    values
        .iter()
        .enumerate()
        .map(
            |(id, v)| match as_int(v).and_then(|t| i32::try_from(t).ok()) {
                Some(t) => Ok(t),
                None => bail!(
                    "{source}: {TOKEN_TYPE_KEY}[{id}] should be an integer, found {:?}",
                    v
                ),
            },
        )
        .collect()
}

/// The merges as pairs, each part and their join checked against the vocabulary.
fn merges(
    md: &HashMap<String, Value>,
    vocab: &HashMap<String, u32>,
    source: &str,
) -> Result<Vec<(String, String)>> {
    let values = get_array(md, MERGES_KEY, source)?;
    let mut out = Vec::with_capacity(values.len());
    for (rank, v) in values.iter().enumerate() {
        let Value::String(s) = v else {
            bail!(
                "{source}: {MERGES_KEY}[{rank}] should be a string, found a {:?}",
                v.value_type()
            )
        };
        let Some((a, b)) = s.split_once(' ') else {
            bail!("{source}: {MERGES_KEY}[{rank}] = {s:?} is not two tokens separated by a space")
        };
        for part in [a, b] {
            if !vocab.contains_key(part) {
                bail!(
                    "{source}: {MERGES_KEY}[{rank}] = {s:?} names {part:?}, which is not in \
                     {TOKENS_KEY}"
                )
            }
        }
        if !vocab.contains_key(&format!("{a}{b}")) {
            bail!(
                "{source}: {MERGES_KEY}[{rank}] = {s:?} makes {:?}, which is not in {TOKENS_KEY}",
                format!("{a}{b}")
            )
        }
        out.push((a.to_string(), b.to_string()));
    }
    Ok(out)
}

/// The pre-tokenizer family `tokenizer.ggml.pre` names.
fn pre(md: &HashMap<String, Value>, source: &str) -> Result<Pre> {
    match md.get(PRE_KEY) {
        None => bail!(
            "{source}: the GGUF metadata has no {PRE_KEY}, so the pre-tokenizer is unknown \
             (guessing would change the ids); supported: {}",
            supported_pre()
        ),
        Some(_) => Pre::from_name(get_string(md, PRE_KEY, source)?, source),
    }
}

fn check_model(md: &HashMap<String, Value>, source: &str) -> Result<()> {
    match get_string(md, MODEL_KEY, source)? {
        GPT2_MODEL => Ok(()),
        "llama" => bail!(
            "{source}: {MODEL_KEY} is \"llama\" (a SentencePiece vocabulary); only \"gpt2\" \
             (byte-level BPE) tokenizers can be built from GGUF metadata"
        ),
        other => bail!(
            "{source}: {MODEL_KEY} is {other:?}; only \"gpt2\" (byte-level BPE) tokenizers can \
             be built from GGUF metadata"
        ),
    }
}

/// The BOS/EOS/EOT/padding ids of a GGUF file's tokenizer, with the BOS and EOS strings, and
/// whether encoding prepends BOS. Checks the same keys [`from_gguf`] needs for that.
pub fn special_tokens(md: &HashMap<String, Value>, source: &str) -> Result<GgufSpecialTokens> {
    check_model(md, source)?;
    let pre = pre(md, source)?;
    let tokens = get_array(md, TOKENS_KEY, source)?;
    let n = tokens.len();
    let name = |id: Option<u32>| match id.map(|i| &tokens[i as usize]) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => bail!(
            "{source}: {TOKENS_KEY}[{}] should be a string, found a {:?}",
            id.unwrap_or_default(),
            v.value_type()
        ),
        None => Ok(None),
    };
    let bos = optional_id(md, BOS_KEY, n, source)?;
    let eos = optional_id(md, EOS_KEY, n, source)?;
    let add_bos = match md.get(ADD_BOS_KEY) {
        None => pre.default_add_bos(),
        Some(Value::Bool(b)) => *b,
        Some(v) => bail!(
            "{source}: {ADD_BOS_KEY} should be a bool, found a {:?}",
            v.value_type()
        ),
    };
    if add_bos && bos.is_none() {
        if md.contains_key(ADD_BOS_KEY) {
            bail!("{source}: {ADD_BOS_KEY} is true but there is no {BOS_KEY}")
        }
        bail!(
            "{source}: there is no {BOS_KEY}, but with no {ADD_BOS_KEY} this pre-tokenizer's \
             default is to prepend BOS; set {ADD_BOS_KEY} = false or give a {BOS_KEY}"
        )
    }
    Ok(GgufSpecialTokens {
        bos,
        bos_token: name(bos)?,
        eos,
        eos_token: name(eos)?,
        eot: optional_id(md, EOT_KEY, n, source)?,
        pad: optional_id(md, PAD_KEY, n, source)?,
        add_bos,
    })
}

/// Builds the tokenizer a GGUF file describes (see the module docs); `source` names the file in
/// errors.
///
/// Only byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) are supported; a
/// SentencePiece one (`"llama"`) or any other is an error naming the type and the file.
pub fn from_gguf(metadata: &HashMap<String, Value>, source: &str) -> Result<Tokenizer> {
    let md = metadata;
    check_model(md, source)?;
    let pre = pre(md, source)?;
    let tokens = tokens(md, source)?;
    let n = tokens.len();
    if let Ok(arch) = get_string(md, "general.architecture", source) {
        let key = format!("{arch}.vocab_size");
        if let Some(v) = md.get(&key) {
            match as_int(v) {
                Some(size) if size as u64 == n as u64 => {}
                _ => bail!("{source}: {key} is {v:?} but {TOKENS_KEY} has {n} tokens"),
            }
        }
    }
    let types = token_types(md, n, source)?;
    let vocab: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let merges = merges(md, &vocab, source)?;
    let special = special_tokens(md, source)?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|e| Error::msg(format!("{source}: building the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre.pre_tokenizer()?));
    tok.with_decoder(Some(ByteLevel::default()));
    if special.add_bos {
        let (id, token) = match (special.bos, &special.bos_token) {
            (Some(id), Some(token)) => (id, token.clone()),
            _ => bail!("{source}: {ADD_BOS_KEY} is true but there is no {BOS_KEY}"),
        };
        let template = TemplateProcessing::builder()
            .try_single(format!("{token} $A"))
            .and_then(|b| b.try_pair(format!("{token} $A:0 {token}:1 $B:1")))
            .map_err(|e| Error::msg(format!("{source}: BOS template: {e}")))?
            .special_tokens(vec![(token, id)])
            .build()
            .map_err(|e| Error::msg(format!("{source}: BOS template: {e}")))?;
        tok.with_post_processor(Some(template));
    }

    let added = |kind: TokenType| {
        tokens
            .iter()
            .zip(&types)
            .filter(move |(_, &t)| t == kind as i32)
            .map(move |(s, _)| AddedToken::from(s.clone(), kind == TokenType::Control))
            .collect::<Vec<_>>()
    };
    tok.add_special_tokens(added(TokenType::Control))
        .map_err(|e| Error::msg(format!("{source}: adding the control tokens: {e}")))?;
    tok.add_tokens(added(TokenType::UserDefined))
        .map_err(|e| Error::msg(format!("{source}: adding the user-defined tokens: {e}")))?;
    for (id, (s, &t)) in tokens.iter().zip(&types).enumerate() {
        if (t == TokenType::Control as i32 || t == TokenType::UserDefined as i32)
            && tok.token_to_id(s) != Some(id as u32)
        {
            bail!(
                "{source}: added token {s:?} got id {:?} instead of its {TOKENS_KEY} id {id}",
                tok.token_to_id(s)
            )
        }
    }
    Ok(tok)
}

/// The GGUF tokenizer metadata of a byte-level BPE `tokenizer` whose pre-tokenizer is the one
/// llama.cpp calls `pre`: `tokenizer.ggml.model` (`gpt2`), `.pre`, `.tokens` (every id's token,
/// added tokens included), `.token_type` (special added tokens [`TokenType::Control`], other
/// added tokens [`TokenType::UserDefined`], the rest [`TokenType::Normal`]) and `.merges`
/// (`"a b"`, in rank order). Special ids and the chat template are the model's, not the
/// tokenizer's: see [`GgufSpecialTokens::metadata`].
///
/// Whether `pre` really is `tokenizer`'s split cannot be read off the tokenizer: [`from_gguf`]
/// on the result encoding as `tokenizer` does is the check (the tests run it).
///
/// Errors when `pre` is not in [`PRE_TOKENIZERS`], when the model is not a BPE with a ByteLevel
/// decoder, when ids have gaps, or when a merge cannot be written as `"a b"`.
pub fn gguf_metadata(tokenizer: &Tokenizer, pre: &str) -> Result<Vec<(String, Value)>> {
    Pre::from_name(pre, "gguf_metadata")?;
    let json: serde_json::Value = tokenizer
        .to_string(false)
        .map_err(|e| Error::msg(format!("serialising the tokenizer: {e}")))?
        .parse()
        .map_err(Error::wrap)?;
    if json["model"]["type"] != "BPE" {
        bail!(
            "gguf_metadata: the tokenizer's model is {}, not a BPE",
            json["model"]["type"]
        )
    }
    if json["decoder"]["type"] != "ByteLevel" {
        bail!(
            "gguf_metadata: the tokenizer's decoder is {}, not ByteLevel: GGUF's \"gpt2\" \
             vocabularies are byte-level",
            json["decoder"]["type"]
        )
    }

    let vocab = tokenizer.get_vocab(true);
    let mut tokens = vec![None; vocab.len()];
    for (token, &id) in &vocab {
        match tokens.get_mut(id as usize) {
            Some(slot) => *slot = Some(token.clone()),
            None => bail!(
                "gguf_metadata: {} tokens but {token:?} has id {id}: a GGUF vocabulary has no \
                 gaps",
                vocab.len()
            ),
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| t.ok_or_else(|| Error::msg(format!("gguf_metadata: no token has id {id}"))))
        .collect::<Result<_>>()?;

    let added = tokenizer.get_added_tokens_decoder();
    let types: Vec<Value> = (0..tokens.len() as u32)
        .map(|id| {
            let t = match added.get(&id) {
                Some(a) if a.special => TokenType::Control,
                Some(_) => TokenType::UserDefined,
                None => TokenType::Normal,
            };
            Value::I32(t as i32)
        })
        .collect();

    let Some(merge_list) = json["model"]["merges"].as_array() else {
        bail!("gguf_metadata: the BPE model has no merges list")
    };
    let mut merges = Vec::with_capacity(merge_list.len());
    for (rank, m) in merge_list.iter().enumerate() {
        // tokenizer.json writes merges as ["a", "b"] (older files: "a b").
        let (a, b) = match m {
            serde_json::Value::Array(p) if p.len() == 2 => (
                p[0].as_str().unwrap_or_default().to_string(),
                p[1].as_str().unwrap_or_default().to_string(),
            ),
            serde_json::Value::String(s) => match s.split_once(' ') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => bail!("gguf_metadata: merge {rank} {s:?} is not \"a b\""),
            },
            other => bail!("gguf_metadata: merge {rank} is {other}, not a pair"),
        };
        if a.is_empty() || b.is_empty() || a.contains(' ') || b.contains(' ') {
            bail!("gguf_metadata: merge {rank} ({a:?}, {b:?}) cannot be written as \"a b\"")
        }
        merges.push(Value::String(format!("{a} {b}")));
    }

    Ok(vec![
        (MODEL_KEY.to_string(), Value::String(GPT2_MODEL.to_string())),
        (PRE_KEY.to_string(), Value::String(pre.to_string())),
        (
            TOKENS_KEY.to_string(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (TOKEN_TYPE_KEY.to_string(), Value::Array(types)),
        (MERGES_KEY.to_string(), Value::Array(merges)),
    ])
}

/// Reads a Hugging Face `tokenizer.json`; errors name the file (missing, not a regular file, not
/// a tokenizer).
///
/// The text is checked to be JSON before `tokenizers` reads it: its decoder deserializer
/// `expect`s on a syntax error inside the `decoder` value (a truncated file panicked, found by
/// fuzzing `tests/fuzz`), and well-formed JSON never reaches that panic (any value is accepted
/// there, as the legacy form).
pub fn from_file(path: &Path) -> Result<Tokenizer> {
    crate::files::check_regular_file(path)?;
    let fail = |why: String| Error::msg(format!("cannot read tokenizer {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("it is not valid JSON: {e}")))?;
    check_bpe_merges(&value).map_err(fail)?;
    drop(value);
    text.parse::<Tokenizer>().map_err(|e| fail(e.to_string()))
}

/// `tokenizers` builds a BPE model's merge table by copying each merge's two tokens into a
/// buffer as long as the longest vocabulary token, and slices the continuing-subword prefix off
/// the second without looking: a merge whose result is not in the vocabulary panics (an index
/// out of range, found by fuzzing), where it means to return an error. The same rule is checked
/// here first: both tokens and their merge (the second without the prefix, which it must start
/// with) are vocabulary tokens.
fn check_bpe_merges(tokenizer: &serde_json::Value) -> std::result::Result<(), String> {
    use serde_json::Value as J;
    let model = &tokenizer["model"];
    let (Some(J::Object(vocab)), Some(J::Array(merges))) =
        (model.get("vocab"), model.get("merges"))
    else {
        return Ok(());
    };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = match merge {
            J::String(m) => match m.split_once(' ') {
                Some(pair) => pair,
                None => return Ok(()), // tokenizers refuses it with its own error
            },
            J::Array(pair) => match pair.as_slice() {
                [J::String(a), J::String(b)] => (a.as_str(), b.as_str()),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        let Some(rest) = b.strip_prefix(prefix) else {
            return Err(format!(
                "merge {i} ({a:?}, {b:?}): the second token does not start with the \
                 continuing_subword_prefix {prefix:?}"
            ));
        };
        let merged = format!("{a}{rest}");
        for token in [a, b, merged.as_str()] {
            if !vocab.contains_key(token) {
                return Err(format!(
                    "merge {i} ({a:?}, {b:?}) needs {token:?}, which its vocabulary lacks"
                ));
            }
        }
    }
    Ok(())
}

/// Errors when `tokenizer` (read from `source`) has an id past the model's `vocab_size`
/// embeddings (read from `config_source`): it would fail deep in the first forward pass
/// ("index-select invalid index"), naming neither file.
pub fn check_ids(
    tokenizer: &Tokenizer,
    source: &str,
    vocab_size: usize,
    config_source: &str,
) -> Result<()> {
    if let Some((token, id)) = tokenizer
        .get_vocab(true)
        .into_iter()
        .filter(|&(_, id)| id as usize >= vocab_size)
        .max_by_key(|&(_, id)| id)
    {
        bail!(
            "the tokenizer {source} has token {token:?} with id {id}, but the model has \
             {vocab_size} embeddings (vocab_size in {config_source}): the tokenizer belongs to \
             another model"
        )
    }
    Ok(())
}
