//! The unit's system call filter allows what the daemon does: a real `glimpse run` under
//! `strace -f -c` is taught two classes over MQTT (real Mosquitto, real photos), retrains and
//! exports, then stops on SIGTERM; every system call it made must pass `SystemCallFilter=` of
//! systemd/glimpse.service, resolved as systemd resolves it (`systemd-analyze syscall-filter`
//! expands each group; allow and deny lines apply in order).
//!
//! Both engines are traced (tract, and onnxruntime on the CPU), each run under the kernel's
//! memory-deny-write-execute (`prctl(PR_SET_MDWE)`, inherited through exec), which refuses
//! what the unit's `MemoryDenyWriteExecute=yes` refuses: a writable and executable mapping.
//!
//! Needs strace and systemd's tools; a missing tool fails the test.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::DaemonConfig;
use common::{Mosquitto, Subscriber};
use serde_json::Value;

const GLIMPSE: &str = env!("CARGO_BIN_EXE_glimpse");
const DEVICE: &str = "sys";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn topic(kind: &str) -> String {
    format!("glimpse/{DEVICE}/{kind}")
}

/// The first `n` photos of a class of the real rock-paper-scissors set.
fn photos(class: &str, n: usize) -> Vec<PathBuf> {
    common::rps_full_photos(class, n)
}

/// Every syscall name a group (or a single call) stands for, nested groups expanded.
fn expand(item: &str, out: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    let output = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze ({e}): apt-get install systemd"));
    assert!(
        output.status.success(),
        "systemd-analyze syscall-filter {item}"
    );
    for line in String::from_utf8_lossy(&output.stdout).lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        expand(name, out);
    }
}

/// The calls the unit's `SystemCallFilter=` lines allow. The first line decides the mode (an
/// allow list here, so anything not named is refused); later lines add (`x`) or remove (`~x`).
fn allowed_by_unit() -> BTreeSet<String> {
    let unit = std::fs::read_to_string(repo().join("systemd/glimpse.service")).expect("unit");
    let mut allowed = BTreeSet::new();
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .collect();
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the filter should start with an allow list: {lines:?}"
    );
    for line in lines {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut set = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(item, &mut set);
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// Syscall names from `strace -c` output (the last column of each table row).
fn traced_calls(summary: &str) -> BTreeSet<String> {
    summary
        .lines()
        .filter(|l| !l.starts_with('%') && !l.starts_with('-') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| {
            *name != "total" && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_syscall_of_teach_retrain_export_passes_the_unit_filter() {
    trace_teach_retrain_export(|config| config);
}

#[test]
fn the_onnxruntime_engine_passes_the_unit_filter_and_write_xor_execute() {
    let library = common::onnxruntime_library().display().to_string();
    trace_teach_retrain_export(|config| {
        config
            .set("model.engine", "onnxruntime")
            .set("model.onnxruntime_library", library.as_str())
    });
}

/// PR_SET_MDWE / PR_MDWE_REFUSE_EXEC_GAIN (linux/prctl.h, Linux 6.3).
const PR_SET_MDWE: libc::c_int = 65;
const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;

/// Runs the daemon (configured by `engine`) under strace and W^X, teaches, retrains, exports,
/// stops it, and checks every traced call against the unit's filter.
fn trace_teach_retrain_export(engine: impl FnOnce(DaemonConfig) -> DaemonConfig) {
    let unit = std::fs::read_to_string(repo().join("systemd/glimpse.service")).expect("unit");
    assert!(
        unit.lines()
            .any(|l| l.trim() == "MemoryDenyWriteExecute=yes"),
        "the unit no longer denies write+execute memory: update this test"
    );
    let allowed = allowed_by_unit();
    assert!(
        allowed.contains("read") && !allowed.contains("reboot"),
        "resolution is wrong"
    );

    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let idle = tmp.path().join("idle");
    std::fs::create_dir_all(&idle).expect("mkdir");
    std::fs::copy(&photos("rock", 1)[0], idle.join("000.png")).expect("copy");
    let daemon_config = engine(
        DaemonConfig::new(tmp.path(), &broker, DEVICE)
            .source_dir(&idle)
            .set("mqtt.stats_interval_s", 1),
    );
    let config = tmp.path().join("glimpse.toml");
    std::fs::write(&config, daemon_config.render()).expect("write config");
    let summary = tmp.path().join("strace.txt");
    let log = tmp.path().join("daemon.log");
    let mut strace = Command::new("strace");
    // SAFETY: prctl(2) in the forked child before exec; it touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut strace, || {
            if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut strace = strace
        .args(["-f", "-c", "-o"])
        .arg(&summary)
        .args([GLIMPSE, "run", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run strace under PR_SET_MDWE ({e}): apt-get install strace; Linux >= 6.3"
            )
        });
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let sub = Subscriber::connect(broker.port(), &[&topic("#")]);
    sub.wait_for(Duration::from_secs(120), |m| {
        m.topic == topic("availability") && m.payload == b"online"
    })
    .unwrap_or_else(|| panic!("daemon never came online:\n{}", daemon_log()));
    let acks = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while sub.messages(&topic("ack")).len() < n {
            assert!(Instant::now() < deadline, "no ack {n}:\n{}", daemon_log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let all = sub.messages(&topic("ack"));
        serde_json::from_slice::<Value>(&all[n - 1].payload).expect("ack JSON")
    };
    let mut sent = 0;
    for class in ["rock", "paper"] {
        for photo in photos(class, 6) {
            let bytes = std::fs::read(&photo).expect("read photo");
            sub.publish(&topic(&format!("sample/{class}")), bytes, false);
            sent += 1;
            let ack = acks(sent);
            assert_eq!(ack["status"], "accepted", "{ack}");
        }
    }
    sub.publish(&topic("cmd/retrain"), Vec::new(), false);
    let ack = acks(sent + 1);
    assert!(ack["head_version"].as_u64().is_some(), "retrain: {ack}");
    sub.publish(
        &topic("cmd/export"),
        br#"{"publish": true}"#.to_vec(),
        false,
    );
    let ack = acks(sent + 2);
    assert_eq!(ack["published"], true, "export: {ack}");

    // SIGTERM the daemon (strace's child), then strace writes its summary and exits.
    let daemon_pid = child_of(strace.id());
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(daemon_pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = strace.try_wait().expect("wait for strace") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", daemon_log());

    let summary = std::fs::read_to_string(&summary).expect("strace summary");
    let calls = traced_calls(&summary);
    assert!(
        calls.contains("setpriority") && calls.contains("fsync") && calls.len() > 20,
        "the trace misses calls the run must make: {calls:?}\n{summary}"
    );
    // SQLite gives a new WAL or shm file the database's owner with fchown(2), but only when
    // running as root (`robustFchown` in sqlite3.c checks geteuid() == 0) and it ignores a
    // failure; the unit runs as User=glimpse, so a test run as root is the only one to make it.
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let refused: Vec<&String> = calls
        .iter()
        .filter(|c| !allowed.contains(*c))
        .filter(|c| !(root && c.as_str() == "fchown"))
        .collect();
    assert!(
        refused.is_empty(),
        "systemd/glimpse.service would refuse {refused:?} (EPERM):\n{summary}"
    );
    assert!(
        !daemon_log().contains("cannot lower priority"),
        "{}",
        daemon_log()
    );
}

/// The pid of `parent`'s only child (strace runs the daemon as its child).
fn child_of(parent: u32) -> u32 {
    let path = format!("/proc/{parent}/task/{parent}/children");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("strace ({parent}) has no child: {text:?}"))
}

#[test]
fn strace_summaries_are_parsed() {
    let text = "% time     seconds  usecs/call     calls    errors syscall\n\
                ------ ----------- ----------- --------- --------- ----------------\n\
                 40.00    0.000040          10         4           futex\n\
                  1.00    0.000001           1         1         1 setpriority\n\
                ------ ----------- ----------- --------- --------- ----------------\n\
                100.00    0.000041           8         5         1 total\n";
    let calls = traced_calls(text);
    assert_eq!(
        calls.into_iter().collect::<Vec<_>>(),
        ["futex".to_string(), "setpriority".to_string()]
    );
}
