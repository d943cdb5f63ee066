//! Test-only fault injection: `GLIMPSE_FAULT=<name>` makes one part of the daemon fail on purpose,
//! so integration tests (tests/lifecycle.rs) can check that each such failure ends the process
//! with a non-zero exit code, as systemd's `Restart=on-failure` needs.
//!
//! The hook exists only in debug builds (what `cargo test` builds) or with the `fault-injection`
//! feature; in a release build [`armed`] is a constant `false` and the variable means nothing.

/// A failure a test can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The inference thread panics on its third frame.
    InferPanic,
    /// The learner thread panics on the first sample or command it takes.
    LearnerPanic,
    /// The learner hangs on the first sample or command it takes (a wedged thread).
    LearnerStall,
    /// The MQTT poll task returns when the first message arrives.
    MqttPollEnd,
    /// The MQTT poll task stops polling (but does not end) when the first message arrives.
    MqttPollHang,
    /// The process aborts (like `kill -9`: no cleanup) while storing a head version, after its
    /// file is written and before the database commit.
    HeadCommitAbort,
}

impl Fault {
    /// The value of `GLIMPSE_FAULT` that arms it.
    pub fn name(self) -> &'static str {
        match self {
            Fault::InferPanic => "infer-panic",
            Fault::LearnerPanic => "learner-panic",
            Fault::LearnerStall => "learner-stall",
            Fault::MqttPollEnd => "mqtt-poll-end",
            Fault::MqttPollHang => "mqtt-poll-hang",
            Fault::HeadCommitAbort => "head-commit-abort",
        }
    }
}

/// Whether the test asked for `fault`.
#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub fn armed(fault: Fault) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| std::env::var("GLIMPSE_FAULT").ok())
        .as_deref()
        == Some(fault.name())
}

/// Whether the test asked for `fault`: never, in a release build.
#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
#[inline(always)]
pub fn armed(_fault: Fault) -> bool {
    false
}

/// Panics when `fault` is armed (the failure the test asked for).
pub fn maybe_panic(fault: Fault) {
    if armed(fault) {
        panic!("injected fault {}", fault.name());
    }
}
