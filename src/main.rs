//! The `glimpse` command line: parses arguments, calls the library, maps errors to exit codes.
fn main() {}
