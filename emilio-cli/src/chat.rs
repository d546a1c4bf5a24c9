//! `emilio chat`: a conversation, one user line at a time, on one KV cache.
//!
//! Each turn renders the whole conversation with the model's chat template and feeds the model
//! only the text after what its KV cache already holds (the earlier turns, replies included), so
//! a turn costs its own tokens, not the conversation's. When the new rendering does not extend
//! the cached text (a template that rewrites earlier turns, say by dropping an old reasoning
//! block), the cache is emptied and the whole conversation is prefilled again, with a note.
//!
//! Replies go to stdout; the prompt, notes and the answers to `/` commands go to stderr, so a
//! pipe's stdout holds the replies alone.

use std::io::{BufRead, Write};

use anyhow::{anyhow, bail, Result};
use emilio_qwen::chat::{ChatTemplate, Message};
use emilio_qwen::generation::{CausalLM, Generator, Sampler, Timings};
use tokenizers::Tokenizer;

use crate::cli::{Backend, ChatArgs};
use crate::generate::sampler;
use crate::prompt::{chat_template, encode};
use crate::runner::Runner;
use crate::stream::TextStream;
use crate::{device, source};

const HELP: &str = "\
commands:
  /reset        forget the conversation (the system message stays)
  /system TEXT  set the system message and start over (/system alone: the template's default)
  /stats        tokens in the context, its limit, the last turn's speeds
  /help         this list
  /quit         end the chat (as Ctrl-D / end of input does)
anything else is your next message.";

pub fn run(args: &ChatArgs) -> Result<()> {
    let device = device::open_for(&args.model, args.backend == crate::cli::Backend::Emilio)?;
    let files = source::open(&args.model)?;
    let tokenizer = files.tokenizer()?;
    let own = files.chat_template()?;
    let template =
        chat_template(&tokenizer, own.as_ref(), &files.tokenizer_source())?.ok_or_else(|| {
            anyhow!(
                "{} has no chat template (no chat_template in tokenizer_config.json) and its \
             tokenizer has no ChatML tokens: it is not a chat model. Use `emilio generate \
             --no-chat` to continue a text instead",
                files.label
            )
        })?;
    let stops = files.stop_tokens(&tokenizer)?;
    let (mut model, load) = Runner::load(&files, args.backend, &args.model, &device)?;
    let context = model.max_positions(&files);
    let generator =
        Generator::new(&mut model, sampler(&args.sampling), &device).with_stop_tokens(stops);
    let mut chat = Chat {
        template,
        tokenizer: &tokenizer,
        generator,
        system: args.system.clone(),
        history: Vec::new(),
        cached_text: String::new(),
        last_turn: None,
        context,
        max_tokens: args.max_tokens,
        verbose: args.verbose,
    };
    eprintln!(
        "{} ({} backend) loaded in {:.2}s{}; /help lists the commands, Ctrl-D ends the chat",
        files.label,
        match args.backend {
            Backend::Emilio => format!("emilio {}", args.model.log_label()),
            other => other.name(),
        },
        load.time.as_secs_f64(),
        if chat.template.is_fallback() {
            "; no chat template of its own: ChatML"
        } else {
            ""
        },
    );

    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let input = line.trim_end_matches(['\n', '\r']);
        if input.trim().is_empty() {
            continue;
        }
        match input.strip_prefix('/') {
            Some(command) => {
                if !chat.command(command) {
                    return Ok(());
                }
            }
            None => chat.turn(input)?,
        }
    }
}

/// What one turn cost.
struct Turn {
    /// Tokens already in the cache before the turn (reused, not prefilled again).
    reused: usize,
    /// The turn's prefill and decode timings.
    timings: Timings,
    /// Tokens of the reply (a stop token not counted).
    reply_tokens: usize,
    /// Whether a stop token ended the reply (else the token budget did).
    stopped: bool,
}

/// A conversation and the model state that holds it.
struct Chat<'t, M, S> {
    template: ChatTemplate,
    tokenizer: &'t Tokenizer,
    generator: Generator<M, S>,
    system: Option<String>,
    /// The user and assistant turns so far.
    history: Vec<Message>,
    /// The text whose tokens the KV cache holds, as the template rendered it and the model
    /// replied.
    cached_text: String,
    last_turn: Option<Turn>,
    /// The model's context: `max_position_embeddings`.
    context: usize,
    max_tokens: usize,
    verbose: bool,
}

impl<M: CausalLM, S: Sampler> Chat<'_, M, S> {
    /// Runs `/command`; false when the chat should end.
    fn command(&mut self, command: &str) -> bool {
        let (name, rest) = command
            .split_once(char::is_whitespace)
            .unwrap_or((command, ""));
        match name {
            "reset" => {
                self.reset();
                eprintln!("the conversation is forgotten");
            }
            "system" => {
                let text = rest.trim();
                if text.is_empty() {
                    self.system = None;
                    eprintln!(
                        "no system message: the template's default applies; conversation reset"
                    );
                } else {
                    self.system = Some(text.to_string());
                    eprintln!("system message set; conversation reset");
                }
                self.reset();
            }
            "stats" => eprintln!("{}", self.stats()),
            "help" => eprintln!("{HELP}"),
            "quit" | "exit" => return false,
            _ => eprintln!("unknown command /{name}; /help lists the commands"),
        }
        true
    }

    fn reset(&mut self) {
        self.history.clear();
        self.cached_text.clear();
        self.generator.reset();
        self.last_turn = None;
    }

    /// The conversation as the template sees it.
    fn messages(&self) -> Vec<Message> {
        self.system
            .iter()
            .map(|s| Message::system(s.as_str()))
            .chain(self.history.iter().cloned())
            .collect()
    }

    fn stats(&self) -> String {
        let mut s = format!(
            "context: {} of {} tokens",
            self.generator.tokens().len(),
            self.context
        );
        match &self.last_turn {
            Some(turn) => s.push_str(&format!("; last turn: {}", describe(turn))),
            None => s.push_str("; no turn yet"),
        }
        s
    }

    /// One user turn: the model reads it and its reply is streamed to stdout.
    fn turn(&mut self, user: &str) -> Result<()> {
        let mut messages = self.messages();
        messages.push(Message::user(user));
        let text = match self.template.render(&messages, true) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: {e}; the turn is dropped");
                return Ok(());
            }
        };
        let new_text = match text.strip_prefix(self.cached_text.as_str()) {
            Some(suffix) => suffix,
            None => {
                eprintln!(
                    "note: the conversation, rendered anew, does not extend the text in the \
                     cache (the chat template rewrote earlier turns, or a reply was cut inside \
                     a character); prefilling the whole conversation again"
                );
                self.generator.reset();
                self.cached_text.clear();
                &text
            }
        };
        let ids = encode(self.tokenizer, new_text)?;
        if ids.is_empty() {
            bail!("the turn tokenizes to no tokens")
        }
        let reused = self.generator.tokens().len();
        if reused + ids.len() >= self.context {
            eprintln!(
                "the conversation has reached the model's context: {reused} tokens are in use \
                 and this turn needs {} more, of {}. /reset to start over",
                ids.len(),
                self.context
            );
            return Ok(());
        }
        let room = self.context - reused - ids.len();
        let max_tokens = self.max_tokens.min(room);

        let before = self.generator.timings().clone();
        let mut reply = Vec::new();
        let mut stream = TextStream::new(self.tokenizer);
        let mut out = std::io::stdout().lock();
        let mut next = self.generator.prefill(&ids)?;
        let mut stopped = false;
        loop {
            if self.generator.is_stop(next) {
                stopped = true;
                break;
            }
            reply.push(next);
            if let Some(piece) = stream.push(next)? {
                write!(out, "{piece}")?;
                out.flush()?;
            }
            if reply.len() == max_tokens {
                break;
            }
            next = self.generator.step(next)?;
        }
        if let Some(piece) = stream.finish()? {
            write!(out, "{piece}")?;
        }
        writeln!(out)?;
        out.flush()?;

        // The cache holds every reply token but the last when the reply was cut at its budget
        // (a stop token is never fed).
        let in_cache = if stopped {
            &reply[..]
        } else {
            &reply[..reply.len().saturating_sub(1)]
        };
        self.cached_text.push_str(new_text);
        self.cached_text.push_str(&self.decode(in_cache)?);
        self.history.push(Message::user(user));
        self.history.push(Message::assistant(self.decode(&reply)?));

        let after = self.generator.timings();
        let turn = Turn {
            reused,
            timings: Timings {
                prefill_tokens: ids.len(),
                prefill: after.prefill - before.prefill,
                decode: after.decode[before.decode.len()..].to_vec(),
            },
            reply_tokens: reply.len(),
            stopped,
        };
        if self.verbose {
            eprintln!("turn {}: {}", self.history.len() / 2, describe(&turn));
        }
        self.last_turn = Some(turn);
        if !stopped && reply.len() == room {
            eprintln!(
                "the reply reached the end of the model's {}-token context. /reset to start over",
                self.context
            );
        }
        Ok(())
    }

    /// The text of `tokens` as the template gets it back: special tokens kept, so that the
    /// rendering of the reply is the text the cache holds.
    fn decode(&self, tokens: &[u32]) -> Result<String> {
        crate::stream::decode(self.tokenizer, tokens, false)
            .map_err(|e| anyhow!("cannot decode the reply: {e}"))
    }
}

/// "prefill P new tokens after C cached at R tok/s; decode D tokens at S tok/s; reply N tokens,
/// ended by a stop token" (or "cut at the token limit").
fn describe(turn: &Turn) -> String {
    let t = &turn.timings;
    format!(
        "prefill {} new tokens after {} cached at {:.1} tok/s; decode {} tokens at {:.1} tok/s; \
         reply {} tokens, {}",
        t.prefill_tokens,
        turn.reused,
        t.prefill_tok_s(),
        t.decode.len(),
        t.decode_tok_s(),
        turn.reply_tokens,
        if turn.stopped {
            "ended by a stop token"
        } else {
            "cut at the token limit"
        }
    )
}
