//! Raw V4L2 bindings (`<linux/videodev2.h>`): v4l2-sys-mit 0.3.0 with the bindings generated once
//! per target by `regenerate.sh` and checked in, so building glimpse needs no libclang/bindgen.
//! The crate's API is the upstream one (same bindgen version and options), so `v4l` and nokhwa
//! use it unchanged through `[patch.crates-io]`.
//!
//! Only x86_64 and aarch64 Linux are generated (glimpse's host and Jetson targets); another target
//! fails to compile here rather than getting another architecture's layouts.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
include!("bindings/x86_64.rs");
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
include!("bindings/aarch64.rs");
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "the vendored v4l2-sys-mit has bindings for x86_64 and aarch64 Linux only: add this target to \
     vendor/v4l2-sys-mit/regenerate.sh"
);

#[cfg(test)]
#[macro_use]
mod abi_tests; // sizes, offsets and ioctl numbers against the kernel's documented values

/// The target's own bindings (x86_64 on the build host; aarch64 natively under qemu-aarch64 in
/// cross/check-aarch64.sh).
#[cfg(test)]
mod abi {
    #[allow(unused_imports)] // glob: the macro names only some of the bindings
    use super::*;
    abi_tests!();
}

/// The aarch64 bindings, checked on the x86_64 host too: both are LP64 Linux targets whose C
/// types (and so Rust's `repr(C)` layouts) have the same sizes and alignments, so a wrong or
/// stale aarch64 file fails `cargo test` here, not only the board check.
#[cfg(all(test, target_arch = "x86_64"))]
#[allow(dead_code)] // a private copy of the bindings: only the tests use it
mod abi_aarch64_bindings {
    include!("bindings/aarch64.rs");
    abi_tests!();
}
