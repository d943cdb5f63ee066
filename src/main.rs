//! The `glimpse` command line: parses arguments, calls the library, maps errors to exit codes.
//!
//! Exit codes: 0 success, 1 runtime failure (or some input could not be processed), 2 bad
//! configuration or usage (unknown key, missing model file, bad flag), as systemd and scripts
//! expect a daemon that cannot start to say why in one line and exit non-zero.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use glimpse::cli;
use glimpse::cli::common::ConfigError;

#[derive(Parser, Debug)]
#[command(name = "glimpse", version, about = "Eyes for Jetson boards that can be taught in the field")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Top-k classes of images: ImageNet by default, or a trained head's with --head.
    Classify(cli::classify::ClassifyArgs),
    /// Train a head on a class-per-folder dataset and write the head file.
    Train(cli::train::TrainArgs),
    /// Per-stage timings, throughput, memory and training time on this machine.
    Bench(cli::bench::BenchArgs),
    /// Download and verify the model a manifest names.
    FetchModel(cli::fetch::FetchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Classify(args) => cli::classify::run(args),
        Command::Train(args) => cli::train::run(args).map(|()| true),
        Command::Bench(args) => cli::bench::run(args).map(|()| true),
        Command::FetchModel(args) => cli::fetch::run(args).map(|()| true),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("glimpse: {err:#}");
            if err.chain().any(|cause| cause.is::<ConfigError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
