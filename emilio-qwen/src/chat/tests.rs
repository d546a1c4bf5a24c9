//! The chat templates of real models rendered to the exact text their own logic yields (written
//! out by hand from the template, not produced by this code), the functions and filter
//! transformers adds, and the ways a template reaches us (`tokenizer_config.json`, GGUF).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as Gguf;

use super::*;

/// SmolLM2-135M-Instruct's template, as its `tokenizer_config.json` ships it.
const SMOLLM2: &str = include_str!("../../tests/fixtures/smollm2_chat_template.jinja");
/// Qwen2.5-0.5B-Instruct's template (with its tools branch), as its `tokenizer_config.json`
/// ships it.
const QWEN25: &str = include_str!("../../tests/fixtures/qwen2.5_chat_template.jinja");

fn smollm2() -> ChatTemplate {
    ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>")).unwrap()
}

fn qwen25() -> ChatTemplate {
    ChatTemplate::new(QWEN25, None, Some("<|im_end|>")).unwrap()
}

fn render(template: &str, messages: &[Message]) -> Result<String> {
    ChatTemplate::new(template, Some("<s>"), Some("</s>"))?.render(messages, false)
}

/// A temp directory for config files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("emilio-chat-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn smollm2_inserts_its_own_default_system_message() {
    let text = smollm2()
        .render(&[Message::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // Without the generation prompt the text ends with the user's turn.
    let text = smollm2()
        .render(&[Message::user("What is the capital of France?")], false)
        .unwrap();
    assert!(text.ends_with("France?<|im_end|>\n"), "{text:?}");
}

#[test]
fn a_system_message_replaces_the_default() {
    let messages = [Message::system("Answer in French."), Message::user("Hi")];
    assert_eq!(
        smollm2().render(&messages, true).unwrap(),
        "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // An empty system message is a system message: it replaces the default too.
    let messages = [Message::system(""), Message::user("Hi")];
    assert_eq!(
        smollm2().render(&messages, true).unwrap(),
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn multi_turn_conversations_keep_every_turn_in_order() {
    let messages = [
        Message::user("Hi"),
        Message::assistant("Hello! How can I help?"),
        Message::user("Tell me a joke."),
    ];
    assert_eq!(
        smollm2().render(&messages, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello! How can I help?<|im_end|>\n\
         <|im_start|>user\nTell me a joke.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // Each turn's rendering extends the previous one: what lets a chat reuse its KV cache.
    let first = smollm2().render(&messages[..1], true).unwrap();
    let second = smollm2().render(&messages, true).unwrap();
    assert!(second.starts_with(&first));
}

#[test]
fn qwen25_default_system_message_and_a_given_one() {
    let q = qwen25();
    assert_eq!(
        q.render(&[Message::user("Hello")], true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    let messages = [
        Message::system("Be brief."),
        Message::user("Hello"),
        Message::assistant("Hi."),
        Message::user("Bye"),
    ];
    assert_eq!(
        q.render(&messages, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n\
         <|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    );
}

#[test]
fn the_chatml_fallback_is_plain_chatml() {
    let c = ChatTemplate::chatml();
    assert!(c.is_fallback());
    assert!(!smollm2().is_fallback());
    let messages = [
        Message::system("S"),
        Message::user("U1"),
        Message::assistant("A1"),
        Message::user("U2"),
    ];
    let expected: String = messages
        .iter()
        .map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content))
        .chain(["<|im_start|>assistant\n".to_string()])
        .collect();
    assert_eq!(c.render(&messages, true).unwrap(), expected);
    // No system message of its own.
    assert_eq!(
        c.render(&[Message::user("U")], true).unwrap(),
        "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn raise_exception_is_an_error_with_its_message() {
    let template = "{% for m in messages %}{% if m.role == 'system' %}\
                    {{ raise_exception('System role not supported') }}{% endif %}\
                    {{ m.content }}{% endfor %}";
    assert_eq!(render(template, &[Message::user("ok")]).unwrap(), "ok");
    let err = render(template, &[Message::system("no")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("System role not supported"), "{err}");
    assert!(err.contains("refused the conversation"), "{err}");
}

#[test]
fn a_malformed_template_is_an_error_when_compiled() {
    for bad in [
        "{% for m in messages %}{{ m.content }}",
        "{{ messages[0] }",
        "{% if %}x{% endif %}",
    ] {
        let err = ChatTemplate::new(bad, None, None).unwrap_err().to_string();
        assert!(err.contains("does not compile"), "{bad}: {err}");
        assert!(err.contains("syntax error"), "{bad}: {err}");
    }
}

#[test]
fn special_tokens_are_in_the_context() {
    let template =
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\
                    {% if tools %}TOOLS{% endif %}{% if add_generation_prompt %}>{% endif %}";
    let t = ChatTemplate::new(template, Some("<s>"), Some("</s>")).unwrap();
    assert_eq!(t.render(&[Message::user("a")], true).unwrap(), "<s>a</s>>");
    assert_eq!((t.bos_token(), t.eos_token()), (Some("<s>"), Some("</s>")));
    // A model without a BOS token: undefined, which prints as nothing (as in transformers).
    let t = ChatTemplate::new(template, None, None).unwrap();
    assert_eq!(t.render(&[Message::user("a")], false).unwrap(), "a");
    assert_eq!(t.source(), template);
}

#[test]
fn whitespace_control_is_transformers() {
    // trim_blocks: the newline after a block tag goes; lstrip_blocks: the indent before it goes;
    // the template's own trailing newline goes.
    let template = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    assert_eq!(
        render(template, &[Message::user("a"), Message::user("b")]).unwrap(),
        "a\nb\n"
    );
}

#[test]
fn python_string_methods_work() {
    let template = "{% for m in messages %}[{{ m.content.strip() }}|{{ m.content.startswith('  x') }}\
                    |{{ m.content.split(',') | length }}|{{ m.content.upper().strip() }}]{% endfor %}";
    assert_eq!(
        render(template, &[Message::user("  x,y,z  ")]).unwrap(),
        "[x,y,z|True|3|X,Y,Z]"
    );
    // Loop controls (`break`), as some templates use.
    let template = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
    let messages = [Message::user("1"), Message::user("2")];
    assert_eq!(render(template, &messages).unwrap(), "1");
}

#[test]
fn tojson_writes_as_pythons_json_dumps() {
    let template = "{{ messages[0] | tojson }}";
    assert_eq!(
        render(template, &[Message::user("a \"quoted\" <b> & é\n")]).unwrap(),
        r#"{"role": "user", "content": "a \"quoted\" <b> & é\n"}"#
    );
    let template = "{{ {'b': [1, 2.5, none, true], 'a': {}} | tojson }}|\
                    {{ {'b': 1, 'a': [1e-7]} | tojson(sort_keys=true) }}|\
                    {{ 'é' | tojson(ensure_ascii=true) }}|{{ 3.0 | tojson }}";
    assert_eq!(
        render(template, &[]).unwrap(),
        r#"{"b": [1, 2.5, null, true], "a": {}}|{"a": [1e-07], "b": 1}|"\u00e9"|3.0"#
    );
    let template = "{{ {'a': [1, 2], 'b': []} | tojson(indent=2) }}";
    assert_eq!(
        render(template, &[]).unwrap(),
        "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": []\n}"
    );
}

#[test]
fn strftime_formats_as_c_does() {
    assert_eq!(
        strftime("%Y-%m-%d %H:%M:%S %B %b %A %a %j %y %%", 0),
        "1970-01-01 00:00:00 January Jan Thursday Thu 001 70 %"
    );
    // 2024-02-29 23:59:59 UTC: a leap day, the last second of a day.
    assert_eq!(
        strftime("%d %B %Y, %H:%M:%S, day %j, %a", 1_709_251_199),
        "29 February 2024, 23:59:59, day 060, Thu"
    );
    // 2000-12-31 12:30:05 UTC, in 12-hour time.
    assert_eq!(strftime("%I:%M %p %e %b", 978_265_805), "12:30 PM 31 Dec");
    assert_eq!(strftime("%Q", 0), "%Q", "unknown specifiers are kept");
}

#[test]
fn strftime_now_prints_the_current_date() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let text = render("{{ strftime_now('%d %b %Y') }}", &[]).unwrap();
    // The day may turn between the two clock readings.
    assert!(
        text == strftime("%d %b %Y", now) || text == strftime("%d %b %Y", now + 1),
        "{text}"
    );
    let year: i64 = text[7..].parse().unwrap();
    assert!(year >= 2024, "{text}");
}

#[test]
fn tokenizer_config_with_a_string_template() {
    let dir = TempDir::new("string");
    let config = serde_json::json!({
        "bos_token": null,
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": false},
        "chat_template": SMOLLM2,
    });
    let path = dir.write("tokenizer_config.json", &config.to_string());
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!((t.bos_token(), t.eos_token()), (None, Some("<|im_end|>")));
    assert!(!t.is_fallback());
    assert_eq!(
        t.render(&[Message::user("What is the capital of France?")], true)
            .unwrap(),
        smollm2()
            .render(&[Message::user("What is the capital of France?")], true)
            .unwrap()
    );
}

#[test]
fn tokenizer_config_with_named_templates_takes_the_default() {
    let dir = TempDir::new("named");
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"},
        ],
    });
    let path = dir.write("tokenizer_config.json", &config.to_string());
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "<s>x");

    let config = serde_json::json!({"chat_template": [{"name": "rag", "template": "R"}]});
    let path = dir.write("no_default.json", &config.to_string());
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("default") && err.contains("rag"), "{err}");
    assert!(err.contains("no_default.json"), "{err}");
}

#[test]
fn tokenizer_config_without_a_template_or_a_file_is_none() {
    let dir = TempDir::new("none");
    assert!(
        ChatTemplate::from_tokenizer_config(&dir.0.join("absent.json"))
            .unwrap()
            .is_none()
    );
    let path = dir.write("base.json", r#"{"eos_token": "<|endoftext|>"}"#);
    assert!(ChatTemplate::from_tokenizer_config(&path)
        .unwrap()
        .is_none());
}

#[test]
fn tokenizer_config_that_is_not_json_or_not_a_template_is_an_error_naming_the_file() {
    let dir = TempDir::new("bad");
    let path = dir.write("broken_config.json", r#"{"chat_template": "{{ x }}""#);
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken_config.json") && err.contains("not valid JSON"),
        "{err}"
    );

    let path = dir.write(
        "malformed_template.json",
        r#"{"chat_template": "{% if %}"}"#,
    );
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("malformed_template.json") && err.contains("does not compile"),
        "{err}"
    );

    let path = dir.write("number.json", r#"{"chat_template": 3}"#);
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("number.json"), "{err}");
}

fn gguf_metadata(entries: &[(&str, Gguf)]) -> HashMap<String, Gguf> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn gguf_tokens() -> Gguf {
    Gguf::Array(
        ["<unk>", "<s>", "</s>", "hello"]
            .iter()
            .map(|t| Gguf::String(t.to_string()))
            .collect(),
    )
}

#[test]
fn gguf_metadata_gives_the_template_and_its_special_tokens() {
    let meta = gguf_metadata(&[
        (
            "tokenizer.chat_template",
            Gguf::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
        ),
        ("tokenizer.ggml.tokens", gguf_tokens()),
        ("tokenizer.ggml.bos_token_id", Gguf::U32(1)),
        ("tokenizer.ggml.eos_token_id", Gguf::U32(2)),
    ]);
    let t = ChatTemplate::from_gguf_metadata(&meta).unwrap().unwrap();
    assert_eq!(
        t.render(&[Message::user("hi")], false).unwrap(),
        "<s>hi</s>"
    );

    assert!(ChatTemplate::from_gguf_metadata(&gguf_metadata(&[(
        "tokenizer.ggml.tokens",
        gguf_tokens()
    )]))
    .unwrap()
    .is_none());

    let meta = gguf_metadata(&[
        ("tokenizer.chat_template", Gguf::String("x".into())),
        ("tokenizer.ggml.tokens", gguf_tokens()),
        ("tokenizer.ggml.eos_token_id", Gguf::U32(9)),
    ]);
    let err = ChatTemplate::from_gguf_metadata(&meta)
        .unwrap_err()
        .to_string();
    assert!(err.contains("eos_token_id") && err.contains('9'), "{err}");

    let meta = gguf_metadata(&[("tokenizer.chat_template", Gguf::U32(0))]);
    assert!(ChatTemplate::from_gguf_metadata(&meta).is_err());
}

#[test]
fn fixtures_are_the_published_templates() {
    // Guards against an edit of the fixtures: the defaults the tests above expect are there.
    assert!(
        SMOLLM2.contains("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    assert!(QWEN25.contains("{%- if tools %}"));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2.5_chat_template.jinja")
        .is_file());
}
