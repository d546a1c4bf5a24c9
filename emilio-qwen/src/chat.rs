//! A model's own chat template: the Jinja program, shipped with an instruct model, that turns a
//! conversation into the exact text the model was trained on.
//!
//! Instruct models differ in how a turn is marked (ChatML's `<|im_start|>`, Llama's headers ...)
//! and in the system message they get when the caller gives none (SmolLM2's "You are a helpful
//! AI assistant named SmolLM, trained by Hugging Face", Qwen2.5's "You are Qwen, created by
//! Alibaba Cloud. You are a helpful assistant."). Both live in the template, so a prompt rendered
//! by it is the one the model expects and nothing about a model family is hard-coded here.
//!
//! [`ChatTemplate`] renders as Hugging Face's `apply_chat_template` does, with
//! [minijinja](https://docs.rs/minijinja) (the engine mistral.rs uses):
//! - the environment is transformers': `trim_blocks`, `lstrip_blocks`, no trailing newline
//!   kept, no HTML escaping, `break`/`continue`;
//! - the context is `messages`, `add_generation_prompt`, `bos_token`, `eos_token` (undefined
//!   when the model has none) and `tools` (none);
//! - the functions are `raise_exception(msg)` (a render error carrying `msg`) and
//!   `strftime_now(format)` (the current time, UTC); the `tojson` filter writes JSON as Python's
//!   `json.dumps` does; Python's string, list and dict methods (`.strip()`, `.startswith()`,
//!   `.split()`, `.items()` ...) work, through `minijinja_contrib::pycompat`.
//!
//! A template comes from a Hugging Face `tokenizer_config.json`
//! ([`ChatTemplate::from_tokenizer_config`]), from a GGUF file's metadata
//! ([`ChatTemplate::from_gguf_metadata`]), from its source ([`ChatTemplate::new`]), or, for a
//! model that ships none, is plain ChatML ([`ChatTemplate::chatml`]).
//!
//! ```
//! use emilio_qwen::chat::{ChatTemplate, Message};
//!
//! let template = ChatTemplate::new(
//!     "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n{% endfor %}\
//!      {% if add_generation_prompt %}<assistant>{% endif %}",
//!     None,
//!     None,
//! )?;
//! let text = template.render(&[Message::user("  Hi!  ")], true)?;
//! assert_eq!(text, "<user>Hi!</user>\n<assistant>");
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::quantized::gguf_file;
use candle_core::{bail, Error, Result};
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Value};
use serde::Serialize;

/// The name the template is stored under in its environment (and which its errors cite).
const TEMPLATE_NAME: &str = "chat_template";

/// ChatML, as Qwen2 and many other instruct models format a conversation, without a default
/// system message: what [`ChatTemplate::chatml`] renders.
const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One turn of a conversation, as a chat template sees it (`message['role']`,
/// `message.content`).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant` (a template may know others, such as `tool`).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message of any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message: instructions that replace the template's default one.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant turn (an earlier reply of the model).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template and the special tokens it may print; see the [module docs](self).
///
/// Compiling happens once, in the constructor, so a malformed template is reported when the
/// model is opened, not at its first turn.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    fallback: bool,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles the Jinja `source`; `bos_token` and `eos_token` are the texts of the model's
    /// special tokens, which templates print as `{{ bos_token }}` (undefined when `None`).
    ///
    /// A template that does not compile is an error saying where and why.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        Self::compile(source.to_string(), bos_token, eos_token, false)
    }

    /// Plain ChatML, `<|im_start|>{role}\n{content}<|im_end|>\n` per message and
    /// `<|im_start|>assistant\n` to prompt a reply, with no system message of its own: only for
    /// a model that ships no template of its own but has ChatML's tokens.
    pub fn chatml() -> Self {
        Self::compile(CHATML.to_string(), None, None, true)
            .expect("the built-in ChatML template compiles")
    }

    /// The template of a Hugging Face `tokenizer_config.json`: its `chat_template` (a string,
    /// or a list of `{name, template}` of which the one named `default` is taken) with its
    /// `bos_token` and `eos_token` (strings, or `{"content": ...}` objects).
    ///
    /// `Ok(None)` when the file or its `chat_template` is absent (a base model); an error naming
    /// the file when it is not JSON, the template has an unexpected shape, or does not compile.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        if !crate::files::regular_file_exists(path)? {
            return Ok(None);
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        };
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{} is not valid JSON: {e}", path.display())))?;
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => default_of_named(named, path)?,
            Some(other) => bail!(
                "{}: chat_template is neither a string nor a list of {{name, template}} \
                 objects: {other}",
                path.display()
            ),
        };
        let bos = special_token(&config, "bos_token", path)?;
        let eos = special_token(&config, "eos_token", path)?;
        Self::new(&source, bos.as_deref(), eos.as_deref())
            .map(Some)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    /// The template of a GGUF file, from its metadata: `tokenizer.chat_template`, with the
    /// tokens `tokenizer.ggml.{bos,eos}_token_id` name in `tokenizer.ggml.tokens` as its
    /// `bos_token` and `eos_token`.
    ///
    /// `Ok(None)` when the file has no template; an error when a key has the wrong type, an id
    /// is out of the vocabulary, or the template does not compile.
    pub fn from_gguf_metadata(
        metadata: &HashMap<String, gguf_file::Value>,
    ) -> Result<Option<Self>> {
        let Some(source) = metadata.get("tokenizer.chat_template") else {
            return Ok(None);
        };
        let source = source
            .to_string()
            .map_err(|_| Error::msg("GGUF metadata: tokenizer.chat_template is not a string"))?;
        let tokens =
            match metadata.get("tokenizer.ggml.tokens") {
                None => None,
                Some(tokens) => Some(tokens.to_vec().map_err(|_| {
                    Error::msg("GGUF metadata: tokenizer.ggml.tokens is not an array")
                })?),
            };
        let token = |key: &str| -> Result<Option<String>> {
            let Some(id) = metadata.get(key) else {
                return Ok(None);
            };
            let id = gguf_index(id)
                .ok_or_else(|| Error::msg(format!("GGUF metadata: {key} is not a token id")))?;
            let Some(tokens) = tokens else {
                return Ok(None);
            };
            match tokens.get(id).map(|t| t.to_string()) {
                Some(Ok(text)) => Ok(Some(text.clone())),
                Some(Err(_)) => bail!("GGUF metadata: tokenizer.ggml.tokens[{id}] is not a string"),
                None => bail!(
                    "GGUF metadata: {key} is {id} but tokenizer.ggml.tokens has {} tokens",
                    tokens.len()
                ),
            }
        };
        let bos = token("tokenizer.ggml.bos_token_id")?;
        let eos = token("tokenizer.ggml.eos_token_id")?;
        Self::new(source, bos.as_deref(), eos.as_deref())
            .map(Some)
            .map_err(|e| Error::msg(format!("GGUF metadata: {e}")))
    }

    /// The text of `messages`, followed, when `add_generation_prompt`, by what opens the
    /// assistant's reply. Without a system message the template's own default applies, if it has
    /// one.
    ///
    /// A template that rejects the conversation (`raise_exception`, say for roles that do not
    /// alternate) is an error carrying its message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the template was added when it compiled");
        let token = |t: &Option<String>| t.as_deref().map_or(Value::UNDEFINED, Value::from);
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => token(&self.bos_token),
            eos_token => token(&self.eos_token),
            tools => Value::from(()),
        };
        template.render(ctx).map_err(render_error)
    }

    /// The special tokens the template writes around messages: every `<|...|>` marker (no
    /// spaces, at most 64 characters) and the BOS/EOS texts found in its renderings of a short
    /// conversation (system, user, assistant, user, then a reply prompted; without the system
    /// message when the template refuses one). A tokenizer must have each as one token, or the
    /// markup reaches the model as plain text. Empty when no conversation renders.
    pub fn special_tokens(&self) -> Vec<String> {
        let with_system = [
            Message::system("S"),
            Message::user("U"),
            Message::assistant("A"),
            Message::user("V"),
        ];
        let text = [&with_system[..], &with_system[1..], &with_system[1..2]]
            .iter()
            .find_map(|messages| self.render(messages, true).ok())
            .unwrap_or_default();
        let mut found: Vec<String> = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("<|") {
            let after = &rest[start + 2..];
            match after.find("|>") {
                Some(end) if end + 4 <= 64 && !after[..end].contains(char::is_whitespace) => {
                    let marker = &rest[start..start + 2 + end + 2];
                    if !found.iter().any(|f| f == marker) {
                        found.push(marker.to_string());
                    }
                    rest = &after[end + 2..];
                }
                _ => rest = after,
            }
        }
        for token in [self.bos_token(), self.eos_token()].into_iter().flatten() {
            if !token.is_empty() && text.contains(token) && !found.iter().any(|f| f == token) {
                found.push(token.to_string());
            }
        }
        found
    }

    /// Whether this is [`ChatTemplate::chatml`], the stand-in for a model without a template.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of the model's beginning-of-sequence token, if it has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The text of the model's end-of-sequence token, if it has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    fn compile(
        source: String,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        fallback: bool,
    ) -> Result<Self> {
        let env = environment(source.clone()).map_err(|e| {
            Error::msg(format!(
                "the chat template does not compile: {}",
                describe(&e)
            ))
        })?;
        Ok(Self {
            env,
            source,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
            fallback,
        })
    }
}

/// The environment transformers renders chat templates in, holding `source`.
fn environment(source: String) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

/// The message of a `raise_exception` call, kept as the source of the render error so that
/// [`render_error`] can tell it from the engine's own errors.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// `raise_exception(message)`: templates call it to refuse a conversation they cannot format.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

fn render_error(e: minijinja::Error) -> Error {
    let raised = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Raised>());
    match raised {
        Some(Raised(message)) => Error::msg(format!(
            "the chat template refused the conversation: {message}"
        )),
        None => Error::msg(format!("rendering the chat template: {}", describe(&e))),
    }
}

/// An engine error on one line: what went wrong, and where in the template.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

/// The template of a `chat_template` list: the entry named `default`.
fn default_of_named(named: &[serde_json::Value], path: &Path) -> Result<String> {
    let mut names = Vec::new();
    for entry in named {
        let name = entry.get("name").and_then(|n| n.as_str());
        let template = entry.get("template").and_then(|t| t.as_str());
        match (name, template) {
            (Some("default"), Some(template)) => return Ok(template.to_string()),
            (Some(name), Some(_)) => names.push(name.to_string()),
            _ => bail!(
                "{}: chat_template lists an entry that is not a {{name, template}} object: {entry}",
                path.display()
            ),
        }
    }
    bail!(
        "{}: chat_template lists templates named {names:?} but none named \"default\"",
        path.display()
    )
}

/// A special token of `tokenizer_config.json`: a string, an added-token object with its
/// `content`, or absent / null.
fn special_token(config: &serde_json::Value, key: &str, path: &Path) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => bail!("{}: {key} has no string \"content\"", path.display()),
        },
        Some(other) => bail!(
            "{}: {key} is neither a string nor a token object: {other}",
            path.display()
        ),
    }
}

/// A GGUF metadata integer as an index (GGUF writers use u32, some i32 or u64).
fn gguf_index(v: &gguf_file::Value) -> Option<usize> {
    use gguf_file::Value as V;
    match *v {
        V::U8(x) => Some(x as usize),
        V::U16(x) => Some(x as usize),
        V::U32(x) => Some(x as usize),
        V::U64(x) => usize::try_from(x).ok(),
        V::I8(x) => usize::try_from(x).ok(),
        V::I16(x) => usize::try_from(x).ok(),
        V::I32(x) => usize::try_from(x).ok(),
        V::I64(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

/// `strftime_now(format)`: the current time (UTC; no time-zone database is consulted), which
/// templates such as Llama 3's print as today's date.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "the clock is before 1970")
        })?
        .as_secs();
    Ok(Value::from(strftime(&format, secs as i64)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats `unix_secs` (UTC) as C's `strftime` does for `%Y %y %m %d %e %j %B %b %A %a %H %I
/// %p %M %S %%`; any other `%x` is kept as written.
pub fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before_month = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1];
    let day_of_year = before_month + day + i64::from(is_leap && month > 2);
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `tojson` as transformers defines it: Python's `json.dumps(value, ensure_ascii=False)` (`, `
/// and `: ` between items, maps in their order, no HTML escaping, unlike minijinja's own), with
/// its `indent`, `sort_keys` and `ensure_ascii` arguments.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let x = f64::try_from(value.clone())?;
            out.push_str(&python_float(x));
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or(""), style),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            let items = keys
                .into_iter()
                .map(|k| {
                    let v = value.get_item(&k)?;
                    Ok((k, v))
                })
                .collect::<std::result::Result<Vec<_>, minijinja::Error>>()?;
            write_container(out, ('{', '}'), items.len(), style, depth, |out, i| {
                let (k, v) = &items[i];
                match k.as_str() {
                    Some(k) => write_json_string(out, k, style),
                    None => write_json_string(out, &k.to_string(), style),
                }
                out.push_str(": ");
                write_json(out, v, style, depth + 1)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), style, depth, |out, i| {
                write_json(out, &items[i], style, depth + 1)
            })?;
        }
        kind => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a value of kind {kind}"),
            ))
        }
    }
    Ok(())
}

/// `open items close`, separated as Python's `json.dumps` separates them.
fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    style: &JsonStyle,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        match style.indent {
            Some(n) => {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&" ".repeat(n * (depth + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(out, i)?;
    }
    if let Some(n) = style.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * depth));
    }
    out.push(close);
    Ok(())
}

fn write_json_string(out: &mut String, s: &str, style: &JsonStyle) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (style.ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it, for the common cases: `1.0`, `0.5`, `1e-07`, `NaN`.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let abs = x.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust writes `1e-7`; Python `1e-07`, with a sign and at least two exponent digits.
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').expect("`{:e}` has an exponent");
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests;
