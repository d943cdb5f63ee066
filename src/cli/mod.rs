//! Subcommand implementations; `src/main.rs` only parses arguments and maps errors to exit codes.
pub mod watch; // `glimpse watch`: print what devices publish
