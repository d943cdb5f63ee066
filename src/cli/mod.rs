//! Subcommand implementations; `src/main.rs` only parses arguments and maps errors to exit codes.
