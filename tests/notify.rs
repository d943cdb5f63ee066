//! systemd integration of the daemon, against a fake systemd: the test binds its own datagram
//! socket as NOTIFY_SOCKET, starts `glimpse run` on an `exec:` source that streams frames for a
//! few seconds and then stalls (its child stops writing), and checks READY=1, periodic
//! WATCHDOG=1 while frames flow, no WATCHDOG=1 once they stop, and STOPPING=1 plus exit 0 on
//! SIGTERM. Also: without JOURNAL_STREAM the logs go to stderr.
//!
//! The windows are generous (seconds, not milliseconds) so a loaded machine cannot fail it.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Mosquitto;

/// Messages received on the fake NOTIFY_SOCKET, with their arrival times.
fn collect(socket: UnixDatagram) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if tx.send((Instant::now(), text)).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(
    rx: &mpsc::Receiver<(Instant, String)>,
    timeout: Duration,
    seen: &mut Vec<(Instant, String)>,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((at, text)) => {
                let hit = pred(&text);
                seen.push((at, text));
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn ready_watchdog_only_while_frames_flow_and_stopping_on_sigterm() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let rx = collect(socket);

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image = repo.join("../shared/testdata/imagenet/owl.jpg");
    // ~8 s of frames at 5 fps, then the child stays alive without writing: a stalled camera.
    let command = format!(
        "for i in $(seq 1 40); do cat '{}'; sleep 0.2; done; sleep 600",
        image.display()
    );
    let config = format!(
        "state_dir = '{state}'\n\
         [model]\nmanifest = '{manifest}'\nthreads = 1\n\
         [source]\nuri = \"exec:{command}\"\n\
         [mqtt]\nurl = '{url}'\ndevice_id = 'notify-test'\n",
        state = dir.path().join("state").display(),
        manifest = repo.join("models/mobilenet_v2_1.0_224.toml").display(),
        url = broker.url(),
    );
    let config_path = dir.path().join("glimpse.toml");
    std::fs::write(&config_path, config).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["run", "--config", config_path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();

    assert!(
        wait_for(&rx, Duration::from_secs(60), &mut seen, |m| m
            .contains("READY=1")),
        "no READY=1; got {seen:?}"
    );
    // Frames flow: at least two watchdog pings.
    let mut pings = 0;
    while pings < 2 {
        assert!(
            wait_for(&rx, Duration::from_secs(20), &mut seen, |m| m
                .contains("WATCHDOG=1")),
            "fewer than 2 WATCHDOG=1 while frames flow; got {seen:?}"
        );
        pings += 1;
    }
    // The child stops writing after ~8 s. Wait for the stall to show (pings stop), then require
    // a quiet stretch of 6 s (3 watchdog intervals) without any WATCHDOG=1.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    loop {
        assert!(
            Instant::now() < deadline,
            "WATCHDOG=1 kept coming after the source stalled"
        );
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok((at, text)) => {
                if text.contains("WATCHDOG=1") {
                    quiet_since = at;
                }
                seen.push((at, text));
            }
            Err(_) => {
                if quiet_since.elapsed() >= Duration::from_secs(6) {
                    break;
                }
            }
        }
    }
    // SIGTERM: STOPPING=1 and a clean exit.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_for(&rx, Duration::from_secs(10), &mut seen, |m| m
            .contains("STOPPING=1")),
        "no STOPPING=1 after SIGTERM; got {seen:?}"
    );
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "exit after SIGTERM");
    // JOURNAL_STREAM unset: the log went to stderr.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("withholding the watchdog ping"),
        "stderr should carry the daemon's log, including the stall warning: {stderr}"
    );
    assert!(
        seen.iter()
            .any(|(_, m)| m.contains("STATUS=") && m.contains("fps")),
        "a STATUS= line with the frame rate is sent every stats interval: {seen:?}"
    );
}
