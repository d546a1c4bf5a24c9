//! The architecture registry: one entry per architecture the fork runs, holding everything that
//! differs between them, and the one place where an architecture's name is looked up.
//!
//! An entry ([`ArchitectureSpec`], one file each: `architecture/qwen2.rs`,
//! `architecture/llama.rs`) holds
//! - its names: `config.json`'s `model_type` values and `architectures` class names, GGUF's
//!   `general.architecture` ([`GgufLayout::name`]), and its handle ([`Architecture`]);
//! - its `config.json` reader: the fields, the defaults published configs leave out, the variants
//!   it refuses (Llama 3's `rope_scaling` is read there);
//! - its GGUF layout: whether llama.cpp permuted the q/k rows, whether the attention has biases;
//! - its stock Candle family ([`StockFamily`]): the A/B reference, Candle's quantized model of a
//!   GGUF file, and how the rotary tables are computed.
//!
//! Names are looked up here only: a `config.json` by [`read_config`] / [`from_config_json`], a
//! GGUF file by [`from_gguf`] (called by `crate::gguf`), a handle by [`Architecture::spec`].
//! An unknown name is an error that lists every registered name, so the messages follow the
//! registry. The code that implements a behaviour (the model's rotary tables, the stock models,
//! the GGUF reader) reads the entry and never matches a name.
//!
//! # Adding an architecture
//!
//! One that reuses the existing behaviours (a Llama-shaped model: the same tensors, other names
//! or defaults, e.g. a Mistral-like `config.json`) takes two files:
//! - a new `architecture/NAME.rs` with its handle (`impl Architecture { pub const NAME }`) and its
//!   `static SPEC: ArchitectureSpec` (names, reader, GGUF layout or `None`, stock family); its
//!   reader may call `llama::config_from_json` and change what differs;
//! - here, `mod NAME;` and `&NAME::SPEC` in [`ALL`].
//!
//! The registry's tests then check that its names round-trip and collide with no other entry's.
//! A behaviour none of the entries has (another rotary, another stock reference, another GGUF
//! layout) is a new variant in `architecture/spec.rs` and its implementation where that
//! behaviour lives (`model.rs`, `reference.rs`, `gguf.rs`).

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{bail, Error, Result};
use serde_json::{Map, Value};

use crate::config::{read_json, Architecture, Config};

mod llama;
mod qwen2;
mod spec;

pub use spec::{ArchitectureSpec, GgufAttentionBias, GgufLayout, StockFamily};

/// Every architecture the fork runs. A `config.json` whose `architectures` lists class names of
/// two entries is read as the first entry's here.
pub static ALL: &[&ArchitectureSpec] = &[&qwen2::SPEC, &llama::SPEC];

impl Architecture {
    /// Its entry in the registry.
    ///
    /// # Panics
    ///
    /// If the handle's entry is missing from [`ALL`]: handles are made by the entries only, so
    /// that is an entry whose registration line is missing (the compiler warns then too: its
    /// `SPEC` is never used).
    pub fn spec(self) -> &'static ArchitectureSpec {
        ALL.iter()
            .copied()
            .find(|s| s.architecture == self)
            .unwrap_or_else(|| {
                panic!("architecture {self} has no entry in architecture::ALL: register it")
            })
    }
}

/// The entry whose `config.json` `model_type` is `name`.
pub fn by_model_type(name: &str) -> Option<&'static ArchitectureSpec> {
    ALL.iter().copied().find(|s| s.model_types.contains(&name))
}

/// The entry whose `config.json` `architectures` class name is `name`.
pub fn by_class_name(name: &str) -> Option<&'static ArchitectureSpec> {
    ALL.iter().copied().find(|s| s.class_names.contains(&name))
}

/// The entry whose GGUF `general.architecture` is `name`.
pub fn by_gguf_name(name: &str) -> Option<&'static ArchitectureSpec> {
    ALL.iter()
        .copied()
        .find(|s| s.gguf.is_some_and(|g| g.name == name))
}

/// Reads and checks a Hugging Face `config.json`.
///
/// - The file must exist and parse as a JSON object (the error names the file).
/// - Its architecture is looked up by [`from_config_json`]; the entry's reader reads the fields
///   (Qwen2: through stock's `qwen2::Config`, "no sliding window" where a field is left out;
///   Llama: its defaults, and Llama 3's `rope_scaling`).
/// - The shapes are checked ([`Config::check`]).
pub fn read_config(path: impl AsRef<Path>) -> Result<Config> {
    let path = path.as_ref();
    let source = path.display().to_string();
    let Value::Object(obj) = read_json(path)? else {
        bail!("{source} is not a JSON object")
    };
    let spec = from_config_json(&obj, &source)?;
    let config = (spec.config_from_json)(obj, &source)?;
    config.check(&source)?;
    Ok(config)
}

/// The entry a `config.json` names, from `architectures` (`Qwen2ForCausalLM`, ...) or
/// `model_type` (`qwen2`, ...). A name no entry has, a field of the wrong type, the two fields
/// naming different entries, or neither field, is an error naming `source` and what was found,
/// and listing what is supported.
pub fn from_config_json(
    obj: &Map<String, Value>,
    source: &str,
) -> Result<&'static ArchitectureSpec> {
    let model_type = obj.get("model_type").filter(|v| !v.is_null());
    let architectures = obj.get("architectures").filter(|v| !v.is_null());
    let found = || {
        format!(
            "model_type {}, architectures {}",
            model_type.map_or("(absent)".to_string(), Value::to_string),
            architectures.map_or("(absent)".to_string(), Value::to_string)
        )
    };
    let unsupported = || {
        Error::msg(format!(
            "{source} does not describe a supported model ({}): emilio-qwen loads {} checkpoints",
            found(),
            supported_checkpoints()
        ))
    };
    let by_type = match model_type {
        None => None,
        Some(t) => Some(t.as_str().and_then(by_model_type).ok_or_else(unsupported)?),
    };
    let by_class = match architectures {
        None => None,
        Some(a) => {
            let names: Vec<&str> = a
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            // In registry order, so that a list naming two entries reads as the first.
            let spec = ALL
                .iter()
                .copied()
                .find(|s| names.iter().any(|n| s.class_names.contains(n)));
            Some(spec.ok_or_else(unsupported)?)
        }
    };
    match (by_type, by_class) {
        (Some(t), Some(c)) if t.architecture != c.architecture => bail!(
            "{source} contradicts itself ({}): model_type and architectures name different \
             families",
            found()
        ),
        (Some(x), _) | (None, Some(x)) => Ok(x),
        (None, None) => bail!(
            "{source} names no model_type or architectures; expected model_type {}",
            join(
                ALL.iter().flat_map(|s| s.model_types).copied().map(quoted),
                " or "
            )
        ),
    }
}

/// The entry a GGUF file's `general.architecture` (`value`, absent when the file has none)
/// names, and its GGUF layout; errors name `source` and what was found, and list the supported
/// names.
pub fn from_gguf(
    value: Option<&gguf_file::Value>,
    source: &str,
) -> Result<(&'static ArchitectureSpec, GgufLayout)> {
    match value {
        Some(gguf_file::Value::String(name)) => ALL
            .iter()
            .find_map(|&s| s.gguf.filter(|g| g.name == name).map(|g| (s, g)))
            .ok_or_else(|| {
                Error::msg(format!(
                    "{source}: general.architecture is \"{name}\"; emilio-qwen runs {} GGUF \
                     files",
                    join(gguf_names().map(quoted), " and ")
                ))
            }),
        Some(other) => bail!("{source}: general.architecture is {other:?}, not a string"),
        None => {
            bail!("{source} has no general.architecture in its metadata: not a model GGUF file")
        }
    }
}

/// Every GGUF `general.architecture` the registry reads.
fn gguf_names() -> impl Iterator<Item = &'static str> {
    ALL.iter().filter_map(|s| s.gguf.map(|g| g.name))
}

/// `Qwen2/Qwen2.5 (model_type "qwen2", architectures ["Qwen2ForCausalLM"] or ["Qwen2Model"])
/// and ...`: every entry's names, for the message of an unsupported `config.json`.
fn supported_checkpoints() -> String {
    let entries = ALL.iter().map(|s| {
        format!(
            "{} (model_type {}, architectures {})",
            s.family,
            join(s.model_types.iter().copied().map(quoted), " or "),
            join(s.class_names.iter().map(|c| format!("[\"{c}\"]")), " or ")
        )
    });
    join(entries, " and ")
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// `a`, `a <last> b`, `a, b <last> c`.
fn join(items: impl IntoIterator<Item = String>, last: &str) -> String {
    let items: Vec<String> = items.into_iter().collect();
    match items.split_last() {
        None => String::new(),
        Some((only, [])) => only.clone(),
        Some((tail, rest)) => format!("{}{last}{tail}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(obj) => obj,
            _ => unreachable!("a JSON object literal"),
        }
    }

    fn gguf(name: &str) -> gguf_file::Value {
        gguf_file::Value::String(name.to_string())
    }

    /// Every name of every entry finds that entry, by each lookup, through the functions that
    /// read files too; and no two entries share a name.
    #[test]
    fn every_entrys_names_round_trip() {
        assert!(!ALL.is_empty());
        for &spec in ALL {
            let arch = spec.architecture;
            assert!(std::ptr::eq(arch.spec(), spec), "{arch}");
            assert_eq!(spec.model_types.first(), Some(&arch.name()), "{arch}");
            for &t in spec.model_types {
                assert!(
                    by_model_type(t).is_some_and(|s| std::ptr::eq(s, spec)),
                    "{t}"
                );
                let found = from_config_json(&object(json!({ "model_type": t })), "c").unwrap();
                assert!(std::ptr::eq(found, spec), "{t}");
            }
            for &c in spec.class_names {
                assert!(
                    by_class_name(c).is_some_and(|s| std::ptr::eq(s, spec)),
                    "{c}"
                );
                let found =
                    from_config_json(&object(json!({ "architectures": [c] })), "c").unwrap();
                assert!(std::ptr::eq(found, spec), "{c}");
                for &t in spec.model_types {
                    let both = object(json!({ "model_type": t, "architectures": ["X", c] }));
                    assert!(std::ptr::eq(from_config_json(&both, "c").unwrap(), spec));
                }
            }
            if let Some(g) = spec.gguf {
                assert!(by_gguf_name(g.name).is_some_and(|s| std::ptr::eq(s, spec)));
                let (found, layout) = from_gguf(Some(&gguf(g.name)), "f").unwrap();
                assert!(std::ptr::eq(found, spec), "{}", g.name);
                assert_eq!(layout, g);
            }
        }
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.architecture, b.architecture);
                assert!(a.model_types.iter().all(|t| !b.model_types.contains(t)));
                assert!(a.class_names.iter().all(|c| !b.class_names.contains(c)));
                if let (Some(x), Some(y)) = (a.gguf, b.gguf) {
                    assert_ne!(x.name, y.name);
                }
            }
        }
    }

    /// An unknown name is an error naming the file and what was found, and listing every name
    /// the registry knows. (The unknown names are ones no entry will ever have, so the test
    /// holds as entries are added.)
    #[test]
    fn unknown_names_list_every_supported_name() {
        let err = |v: Value| {
            from_config_json(&object(v), "dir/config.json")
                .unwrap_err()
                .to_string()
        };
        for msg in [
            err(json!({ "model_type": "no-such-model" })),
            err(json!({ "architectures": ["NoSuchModelForCausalLM"] })),
            err(json!({ "model_type": 7 })),
            err(json!({ "architectures": "LlamaForCausalLM" })),
        ] {
            assert!(msg.contains("dir/config.json"), "{msg}");
            for &spec in ALL {
                assert!(msg.contains(spec.family), "{msg}");
                for name in spec.model_types.iter().chain(spec.class_names) {
                    assert!(msg.contains(&format!("\"{name}\"")), "{name}: {msg}");
                }
            }
        }
        assert!(err(json!({ "model_type": "no-such-model" })).contains("\"no-such-model\""));
        assert!(err(json!({ "architectures": ["NoSuchModelForCausalLM"] }))
            .contains("[\"NoSuchModelForCausalLM\"]"));

        let msg = err(json!({}));
        assert!(msg.contains("names no model_type"), "{msg}");
        for &spec in ALL {
            for name in spec.model_types {
                assert!(msg.contains(&format!("\"{name}\"")), "{name}: {msg}");
            }
        }

        let msg = from_gguf(Some(&gguf("no-such-model")), "m.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("m.gguf") && msg.contains("\"no-such-model\""),
            "{msg}"
        );
        for name in gguf_names() {
            assert!(msg.contains(&format!("\"{name}\"")), "{name}: {msg}");
        }
        let msg = from_gguf(Some(&gguf_file::Value::U32(2)), "m.gguf")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a string"), "{msg}");
        let msg = from_gguf(None, "m.gguf").unwrap_err().to_string();
        assert!(msg.contains("no general.architecture"), "{msg}");
    }

    /// The messages read as they did before the registry (for the entries it had then), and
    /// lists join as English does.
    #[test]
    fn messages_keep_their_wording() {
        let model_types = join(
            ALL.iter().flat_map(|s| s.model_types).copied().map(quoted),
            " or ",
        );
        assert!(model_types.starts_with("\"qwen2\""), "{model_types}");
        assert!(model_types.contains(" or \"llama\"") || model_types.contains(", \"llama\""));
        let gguf = join(gguf_names().map(quoted), " and ");
        assert!(
            gguf.starts_with("\"qwen2\"") && gguf.contains("\"llama\""),
            "{gguf}"
        );
        let supported = supported_checkpoints();
        for entry in [
            "Qwen2/Qwen2.5 (model_type \"qwen2\", architectures [\"Qwen2ForCausalLM\"] or \
             [\"Qwen2Model\"])",
            "Llama-family (model_type \"llama\", architectures [\"LlamaForCausalLM\"] or \
             [\"LlamaModel\"])",
        ] {
            assert!(supported.contains(entry), "{supported}");
        }
        let contradiction = object(json!({
            "model_type": "qwen2", "architectures": ["LlamaForCausalLM"]
        }));
        let msg = from_config_json(&contradiction, "c")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("contradicts") && msg.contains("LlamaForCausalLM"),
            "{msg}"
        );
        assert_eq!(join(Vec::new(), " and "), "");
        assert_eq!(join(["a".to_string()], " and "), "a");
        assert_eq!(join(["a", "b"].map(String::from), " and "), "a and b");
        assert_eq!(join(["a", "b", "c"].map(String::from), " or "), "a, b or c");
    }
}
