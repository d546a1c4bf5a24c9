//! `emilio`: run Qwen2-family models with every product in the log domain, next to stock Candle.

#[macro_use]
mod output;

mod ab;
mod advice;
mod bench;
mod chat;
mod cli;
mod device;
mod eval;
mod generate;
mod hub;
mod memory;
mod progress;
mod prompt;
mod runner;
mod source;
mod stream;
mod sweep;
mod synth;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Generate(args) => generate::run(&args),
        cli::Command::Chat(args) => chat::run(&args),
        cli::Command::Ab(args) => ab::run(&args),
        cli::Command::Eval(args) => eval::run(&args),
        cli::Command::Bench(args) => bench::run(&args),
        cli::Command::Synth(args) => synth::run(&args),
        cli::Command::Sweep(args) => sweep::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line: "loading X: missing tensor Y".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
