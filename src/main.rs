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
#[command(
    name = "glimpse",
    version,
    about = "Eyes for Jetson boards that can be taught in the field"
)]
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
    /// The daemon: watch a camera and publish predictions over MQTT.
    Run(cli::run::RunArgs),
    /// Validate the configuration (file + GLIMPSE_* variables) and print the effective settings.
    CheckConfig(cli::run::RunArgs),
    /// Frames from a source (camera, exec, dir), classified, as JSON lines; no MQTT.
    Capture(cli::capture::CaptureArgs),
    /// Print what devices publish (predictions, state, stats, availability).
    Watch(cli::watch::WatchArgs),
    /// Teach a device: send labeled images as samples and wait for each ack.
    Send(cli::send::SendArgs),
    /// List a device's labels and sample counts.
    Samples(cli::send::DeviceArgs),
    /// Ask a device to retrain its head now.
    Retrain(cli::send::RetrainArgs),
    /// Delete a label's samples on a device (it retrains without the label).
    Forget(cli::send::ForgetArgs),
    /// Ask a device to go back to its previous head version.
    Rollback(cli::send::DeviceArgs),
    /// Fetch a device's samples (thumbnails and labels) as a tar archive.
    Export(cli::export::ExportArgs),
    /// Serve a web page (phone-first) that shows and teaches every device, relayed over MQTT.
    Studio(cli::studio::StudioArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon sets up its own logging (journald or stderr, level from its config); the
    // offline commands only say what went wrong unless RUST_LOG asks for more.
    if !matches!(cli.command, Command::Run(_)) {
        let default = if matches!(cli.command, Command::Capture(_) | Command::Studio(_)) {
            "info"
        } else {
            "warn"
        };
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
    }
    let outcome = match &cli.command {
        Command::Classify(args) => cli::classify::run(args),
        Command::Train(args) => cli::train::run(args).map(|()| true),
        Command::Bench(args) => cli::bench::run(args).map(|()| true),
        Command::FetchModel(args) => cli::fetch::run(args).map(|()| true),
        Command::Run(args) => cli::run::run(args).map(|()| true),
        Command::CheckConfig(args) => cli::run::check(args).map(|()| true),
        Command::Capture(args) => cli::capture::run(args).map(|()| true),
        Command::Watch(args) => cli::watch::watch(args).map(|()| true),
        Command::Send(args) => cli::send::send(args),
        Command::Samples(args) => cli::send::samples(args),
        Command::Retrain(args) => cli::send::retrain(args),
        Command::Forget(args) => cli::send::forget(args),
        Command::Rollback(args) => cli::send::rollback(args),
        Command::Export(args) => cli::export::export(args),
        Command::Studio(args) => cli::studio::studio(args).map(|()| true),
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
