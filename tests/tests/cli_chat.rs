//! `emilio chat`, end to end on `tiny` checkpoints written by `emilio synth`, turns piped into
//! stdin: both replies of two turns printed; the second turn prefills only its own tokens and
//! gives the reply a from-scratch `generate` on the whole conversation gives; `/reset`, `/system`
//! and `--system`; a template that rewrites history; the context limit; end of input.

use std::path::Path;

use emilio_qwen::chat::{ChatTemplate, Message};
use emilio_tests::cli::{generate, Run, Sandbox};

/// Settings under which the random `tiny` model wanders through the vocabulary instead of
/// repeating one token, so replies depend on their context.
const WANDER: [&str; 4] = ["--max-tokens", "6", "--repeat-penalty", "3.0"];

/// [`WANDER`] with shorter replies, which are more often valid text.
const SHORT: [&str; 4] = ["--max-tokens", "4", "--repeat-penalty", "3.0"];

fn chat(sb: &Sandbox, model: &Path, input: &str, extra: &[&str]) -> Run {
    let mut args = vec!["chat", "--model", model.to_str().unwrap(), "--verbose"];
    args.extend_from_slice(extra);
    sb.run_with_input(args, input).ok()
}

fn tokens(model: &Path, text: &str) -> Vec<u32> {
    tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

fn decode(model: &Path, ids: &[u32]) -> String {
    tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .unwrap()
        .decode(ids, false)
        .unwrap()
}

fn template(model: &Path) -> ChatTemplate {
    ChatTemplate::from_tokenizer_config(&model.join("tokenizer_config.json"))
        .unwrap()
        .expect("synthetic checkpoints have a chat template")
}

/// One `--verbose` turn line: "turn K: prefill P new tokens after C cached at R tok/s; decode D
/// tokens at S tok/s; reply N tokens, ended by a stop token" (or "cut at the token limit").
#[derive(Debug, Clone, Copy, PartialEq)]
struct TurnLine {
    prefill: usize,
    cached: usize,
    decode: usize,
    reply: usize,
    stopped: bool,
}

fn number_after(line: &str, key: &str) -> usize {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line:?}"))
        + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|_| panic!("{line:?}"))
}

fn turn_lines(run: &Run) -> Vec<TurnLine> {
    run.stderr
        .lines()
        .filter_map(|l| l.find("turn ").map(|i| &l[i..]))
        .filter(|l| l.contains(": prefill "))
        .map(|l| TurnLine {
            prefill: number_after(l, "prefill "),
            cached: number_after(l, "new tokens after "),
            decode: number_after(l, "; decode "),
            reply: number_after(l, "; reply "),
            stopped: l.ends_with("ended by a stop token"),
        })
        .collect()
}

#[test]
fn two_piped_turns_keep_the_first_in_the_cache() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    let run = chat(&sb, &model, "Hello there\nHow are you?\n/stats\n", &WANDER);
    let turns = turn_lines(&run);
    assert_eq!(turns.len(), 2, "{run}");
    let [first, second] = [turns[0], turns[1]];
    // Both replies are printed, each ended by a newline; the first is what `generate` replies
    // to the same single message.
    let single = generate(&sb, &model, "Hello there", &WANDER);
    assert!(run.stdout.starts_with(&single.stdout), "{run}\n{single}");
    assert!(run.stdout.len() > single.stdout.len() && run.stdout.ends_with('\n'));
    // Turn 1 prefills the rendered message; turn 2 finds in the cache the first prompt and
    // every reply token the model was fed (all but the last when the budget cut the reply).
    let t = template(&model);
    let first_text = t.render(&[Message::user("Hello there")], true).unwrap();
    assert_eq!(first.cached, 0);
    assert_eq!(first.prefill, tokens(&model, &first_text).len());
    let fed = first.reply - usize::from(!first.stopped);
    assert_eq!(second.cached, first.prefill + fed, "{run}");
    assert_eq!(first.decode, fed, "{run}");
    assert!(second.prefill < second.cached, "{run}");
    let in_context = second.cached + second.prefill + second.reply - usize::from(!second.stopped);
    assert!(
        run.stderr
            .contains(&format!("context: {in_context} of 128 tokens")),
        "/stats: {run}"
    );
}

/// The second turn against a from-scratch run: `generate` on the whole two-turn conversation,
/// rendered as one prompt, gives the reply the chat gave from its cache, and the chat prefilled
/// exactly the tokens of the rendered text after what its cache held.
///
/// A from-scratch run tokenizes the first reply's text anew; the comparison holds where that
/// gives back the model's own tokens, so the seeds are scanned for such a reply (a random
/// model's reply is often a broken UTF-8 sequence, byte tokens a re-tokenization merges).
#[test]
fn the_second_reply_from_the_cache_is_the_from_scratch_reply() {
    let sb = Sandbox::new();
    let (user1, user2) = ("Hello there", "How are you?");
    let mut compared = 0;
    for seed in 1..=40 {
        let model = sb.synth_tiny(&format!("tiny-{seed}"), seed, &[]);
        let run = chat(&sb, &model, &format!("{user1}\n{user2}\n"), &SHORT);
        let turns = turn_lines(&run);
        assert_eq!(turns.len(), 2, "{run}");
        let [first, second] = [turns[0], turns[1]];
        let single = generate(&sb, &model, user1, &SHORT);
        assert!(run.stdout.starts_with(&single.stdout), "{run}\n{single}");
        let reply1 = single.stdout.strip_suffix('\n').unwrap();
        let reply2 = &run.stdout[single.stdout.len()..];

        let t = template(&model);
        let prompt1 = t.render(&[Message::user(user1)], true).unwrap();
        let conversation = [
            Message::user(user1),
            Message::assistant(reply1),
            Message::user(user2),
        ];
        let whole = t.render(&conversation, true).unwrap();
        let reply1_ids = tokens(&model, reply1);
        let fed = first.reply - usize::from(!first.stopped);
        let cached_text = format!(
            "{prompt1}{}",
            decode(&model, &reply1_ids[..fed.min(reply1_ids.len())])
        );
        let clean = reply1_ids.len() == first.reply
            && !reply1.contains('\u{fffd}')
            && whole.starts_with(&cached_text)
            && tokens(&model, &whole)
                == [
                    tokens(&model, &prompt1),
                    reply1_ids[..fed].to_vec(),
                    tokens(&model, &whole[cached_text.len()..]),
                ]
                .concat();
        if !clean {
            continue;
        }
        // Only the turn's own tokens were prefilled.
        assert_eq!(
            second.prefill,
            tokens(&model, &whole[cached_text.len()..]).len(),
            "{run}"
        );
        assert_eq!(second.cached + second.prefill, tokens(&model, &whole).len());
        // And the reply is the from-scratch one.
        let mut args = vec!["--no-chat"];
        args.extend(SHORT);
        let scratch = generate(&sb, &model, &whole, &args);
        assert_eq!(
            scratch.timing().prefill_tokens,
            tokens(&model, &whole).len()
        );
        assert_eq!(reply2, scratch.stdout, "seed {seed}:\n{run}\n{scratch}");
        compared += 1;
    }
    assert!(
        compared >= 2,
        "only {compared} seeds gave a reply that re-tokenizes to itself"
    );
}

#[test]
fn reset_forgets_the_conversation() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 2, &[]);
    let run = chat(
        &sb,
        &model,
        "Hello there\nHow are you?\n/reset\nHow are you?\n",
        &WANDER,
    );
    let turns = turn_lines(&run);
    assert_eq!(turns.len(), 3, "{run}");
    assert!(turns[1].cached > 0);
    // After /reset the turn starts from an empty cache and is answered as a first message.
    let t = template(&model);
    let fresh = t.render(&[Message::user("How are you?")], true).unwrap();
    assert_eq!(turns[2].cached, 0, "{run}");
    assert_eq!(turns[2].prefill, tokens(&model, &fresh).len(), "{run}");
    let alone = generate(&sb, &model, "How are you?", &WANDER);
    assert!(run.stdout.ends_with(&alone.stdout), "{run}\n{alone}");
    assert!(run.stderr.contains("forgotten"), "{run}");
}

#[test]
fn system_messages_apply() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 3, &[]);
    let t = template(&model);
    let prefill_of =
        |messages: &[Message]| tokens(&model, &t.render(messages, true).unwrap()).len();
    let user = "Hello there";

    // No system message: the template's default, as `generate` gives it.
    let run = chat(&sb, &model, &format!("{user}\n"), &WANDER);
    assert_eq!(
        turn_lines(&run)[0].prefill,
        prefill_of(&[Message::user(user)])
    );
    assert_eq!(run.stdout, generate(&sb, &model, user, &WANDER).stdout);

    // /system sets one and starts over.
    let run = chat(
        &sb,
        &model,
        &format!("{user}\n/system Be brief.\n{user}\n"),
        &WANDER,
    );
    let turns = turn_lines(&run);
    assert_eq!(turns.len(), 2, "{run}");
    assert_eq!(turns[1].cached, 0, "{run}");
    assert_eq!(
        turns[1].prefill,
        prefill_of(&[Message::system("Be brief."), Message::user(user)]),
        "{run}"
    );
    let mut args = vec!["--system", "Be brief."];
    args.extend(WANDER);
    let expected = generate(&sb, &model, user, &args);
    assert!(run.stdout.ends_with(&expected.stdout), "{run}\n{expected}");

    // --system "" is an empty system message, which replaces the default.
    let mut args = vec!["--system", ""];
    args.extend(WANDER);
    let run = chat(&sb, &model, &format!("{user}\n"), &args);
    assert_eq!(
        turn_lines(&run)[0].prefill,
        prefill_of(&[Message::system(""), Message::user(user)])
    );
    assert_eq!(run.stdout, generate(&sb, &model, user, &args).stdout);
}

#[test]
fn a_template_that_rewrites_history_is_prefilled_again() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 4, &[]);
    // Only the last message is shown: each rendering replaces the previous one.
    let config_path = model.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = "{% for m in messages %}{% if loop.last %}<|im_start|>user\n\
                               {{ m.content }}<|im_end|>\n{% endif %}{% endfor %}\
                               <|im_start|>assistant\n"
        .into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let run = chat(&sb, &model, "Hello there\nHow are you?\n", &WANDER);
    let turns = turn_lines(&run);
    assert_eq!(turns.len(), 2, "{run}");
    assert!(run.stderr.contains("rewrote earlier turns"), "{run}");
    let t = template(&model);
    let second = t
        .render(
            &[
                Message::user("Hello there"),
                Message::assistant("x"),
                Message::user("How are you?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(turns[1].cached, 0, "{run}");
    assert_eq!(turns[1].prefill, tokens(&model, &second).len(), "{run}");
    let alone = generate(&sb, &model, "How are you?", &WANDER);
    assert!(run.stdout.ends_with(&alone.stdout), "{run}\n{alone}");
}

#[test]
fn the_context_limit_is_a_message_not_a_crash() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 5, &[]);
    let config_path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["max_position_embeddings"] = 64.into();
    config["sliding_window"] = 64.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let input = format!("{}/stats\n/reset\nHello\n", "Hello\n".repeat(8));
    let run = chat(
        &sb,
        &model,
        &input,
        &["--max-tokens", "40", "--repeat-penalty", "3.0"],
    );
    assert!(
        run.stderr.contains("reached the model's context"),
        "no context message: {run}"
    );
    assert!(run.stderr.contains("/reset to start over"), "{run}");
    let turns = turn_lines(&run);
    for t in &turns {
        assert!(t.cached + t.prefill + t.decode <= 64, "{t:?}: {run}");
    }
    // After /reset the chat goes on.
    assert_eq!(turns.last().unwrap().cached, 0, "{run}");
    assert!(run.stderr.contains("of 64 tokens"), "{run}");
}

#[test]
fn end_of_input_ends_the_chat() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    for input in ["", "\n\n", "/help\n", "/quit\nHello\n"] {
        let run = chat(&sb, &model, input, &[]);
        assert_eq!(run.stdout, "", "{input:?}: {run}");
        assert!(turn_lines(&run).is_empty(), "{input:?}: {run}");
    }
    let run = sb.run(["chat", "--model", model.to_str().unwrap()]).ok();
    assert_eq!(run.stdout, "", "{run}");
    let run = chat(&sb, &model, "/nonsense\n/help\n", &[]);
    assert!(run.stderr.contains("unknown command /nonsense"), "{run}");
    assert!(run.stderr.contains("/system TEXT"), "{run}");
}
