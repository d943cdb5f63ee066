//! glimpse against a real V4L2 camera: Linux's `vivid` test driver inside a qemu VM
//! (tests/vm/run.sh boots it; tests/vm/init.sh is the VM's /init; docs/camera-vm.md explains).
//!
//! The build machines have no camera and no V4L2 in their kernel, so this is the only test that
//! drives glimpse's camera path through a real driver: format negotiation (YUYV, and a fallback
//! from a format vivid lacks), frame capture and classification, and an unplug mid-stream.
//! The VM's serial console is parsed into steps and per-run output; every expectation that is
//! not met is reported, with the console lines that matter, in one failure message.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The media modules run.sh loads, dependencies first.
const MODULES: [&str; 12] = [
    "mc",
    "videodev",
    "v4l2-dv-timings",
    "v4l2-tpg",
    "videobuf2-common",
    "videobuf2-memops",
    "videobuf2-v4l2",
    "videobuf2-vmalloc",
    "videobuf2-dma-contig",
    "rc-core",
    "cec",
    "vivid",
];
/// Frames the YUYV run must classify (run.sh asks for 5).
const MIN_YUYV_FRAMES: usize = 5;
/// Frames the unplug run must see after the camera is back (run.sh asks for 2).
const MIN_FRAMES_AFTER_RECONNECT: usize = 2;

/// What the VM printed, sorted by the GLIMPSE-VM-* markers of tests/vm/init.sh.
#[derive(Debug, Default)]
struct Console {
    /// step name -> (ok, detail), in the order they were printed.
    steps: Vec<(String, bool, String)>,
    /// run name -> glimpse's stdout lines (JSON expected).
    out: HashMap<String, Vec<String>>,
    /// run name -> glimpse's stderr lines.
    log: HashMap<String, Vec<String>>,
    /// `Some(true)` when the VM reached its end with every step ok.
    done: Option<bool>,
}

impl Console {
    fn parse(text: &str) -> Console {
        let mut c = Console::default();
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            // Firmware escape sequences can precede a marker on its line.
            let line = line.find("GLIMPSE-VM-").map_or(line, |at| &line[at..]);
            if let Some(rest) = line.strip_prefix("GLIMPSE-VM-STEP ") {
                let mut parts = rest.splitn(3, ' ');
                let name = parts.next().unwrap_or("").to_string();
                let ok = parts.next() == Some("ok");
                let detail = parts.next().unwrap_or("").to_string();
                c.steps.push((name, ok, detail));
            } else if let Some(rest) = line.strip_prefix("GLIMPSE-VM-OUT ") {
                let (run, text) = rest.split_once(' ').unwrap_or((rest, ""));
                c.out.entry(run.into()).or_default().push(text.into());
            } else if let Some(rest) = line.strip_prefix("GLIMPSE-VM-LOG ") {
                let (run, text) = rest.split_once(' ').unwrap_or((rest, ""));
                c.log.entry(run.into()).or_default().push(text.into());
            } else if let Some(rest) = line.strip_prefix("GLIMPSE-VM-DONE ") {
                c.done = Some(rest.trim() == "ok");
            }
        }
        c
    }

    fn step(&self, name: &str) -> Option<(bool, &str)> {
        self.steps
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, ok, d)| (*ok, d.as_str()))
    }

    /// The JSON objects a run printed; a line that is not JSON is itself a problem.
    fn json(&self, run: &str, problems: &mut Vec<String>) -> Vec<Value> {
        let mut values = Vec::new();
        for line in self.out.get(run).map(Vec::as_slice).unwrap_or(&[]) {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => values.push(v),
                Err(e) => problems.push(format!("{run}: stdout line is not JSON ({e}): {line}")),
            }
        }
        values
    }

    /// glimpse's "negotiated: ..." log line of a run.
    fn negotiated_log(&self, run: &str) -> Option<&str> {
        self.log
            .get(run)?
            .iter()
            .find(|l| l.contains("negotiated:"))
            .map(String::as_str)
    }
}

/// A JSON line describing one classified frame (as opposed to an event or the summary).
fn is_frame(v: &Value) -> bool {
    v.get("frame_id").is_some()
}

fn event(v: &Value) -> Option<&str> {
    v.get("event").and_then(Value::as_str)
}

/// Why a frame line is not a well-formed, labelled frame, if it is not.
fn frame_problem(v: &Value) -> Option<String> {
    let top = v.get("top_k").and_then(Value::as_array);
    let labelled = top.is_some_and(|t| {
        !t.is_empty()
            && t.iter().all(|p| {
                p.get("label")
                    .and_then(Value::as_str)
                    .is_some_and(|l| !l.is_empty())
                    && p.get("index").and_then(Value::as_u64).is_some()
                    && p.get("score").and_then(Value::as_f64).is_some()
            })
    });
    if !labelled {
        return Some(format!("frame without labelled top_k: {v}"));
    }
    for key in ["width", "height", "latency_ms"] {
        if v.get(key).and_then(Value::as_f64).is_none() {
            return Some(format!("frame without numeric {key}: {v}"));
        }
    }
    if v.get("format").and_then(Value::as_str).is_none() {
        return Some(format!("frame without format: {v}"));
    }
    None
}

/// The summary line of a run: {"frames", "fps", "negotiated"}.
fn summary(values: &[Value]) -> Option<&Value> {
    values
        .iter()
        .rev()
        .find(|v| v.get("frames").is_some() && v.get("negotiated").is_some())
}

/// Every expectation the console does not meet, as one line each (empty: all met).
fn problems(c: &Console) -> Vec<String> {
    let mut p = Vec::new();
    let need_step = |p: &mut Vec<String>, name: &str| match c.step(name) {
        Some((true, _)) => {}
        Some((false, detail)) => p.push(format!("step {name} failed: {detail}")),
        None => p.push(format!("step {name} never reported")),
    };

    need_step(&mut p, "boot");
    for m in MODULES {
        need_step(&mut p, &format!("module:{m}"));
    }
    need_step(&mut p, "device");
    need_step(&mut p, "v4l2:formats");
    need_step(&mut p, "v4l2:disconnect-control");

    // YUYV: at least 5 classified 640x480 YUYV frames and a summary.
    need_step(&mut p, "capture:yuyv");
    let yuyv = c.json("yuyv", &mut p);
    let frames: Vec<&Value> = yuyv.iter().filter(|v| is_frame(v)).collect();
    if frames.len() < MIN_YUYV_FRAMES {
        p.push(format!(
            "yuyv: {} frame lines, want >= {MIN_YUYV_FRAMES}",
            frames.len()
        ));
    }
    p.extend(frames.iter().filter_map(|v| frame_problem(v)));
    for f in &frames {
        let fmt = f.get("format").and_then(Value::as_str).unwrap_or("");
        if !fmt.eq_ignore_ascii_case("yuyv") {
            p.push(format!(
                "yuyv: frame in format {fmt:?}, asked for YUYV: {f}"
            ));
        }
        let size = (f["width"].as_u64(), f["height"].as_u64());
        if size != (Some(640), Some(480)) {
            p.push(format!("yuyv: frame not 640x480 (vivid offers it): {f}"));
        }
    }
    if summary(&yuyv).is_none() {
        p.push("yuyv: no summary line {\"frames\", \"fps\", \"negotiated\"}".into());
    }
    if c.negotiated_log("yuyv").is_none() {
        p.push("yuyv: no \"negotiated:\" line in glimpse's log".into());
    }

    // Fallback: asked for MJPEG, which vivid does not offer; glimpse must pick another format
    // and say which.
    need_step(&mut p, "capture:fallback");
    let fallback = c.json("fallback", &mut p);
    let fb_frames: Vec<&Value> = fallback.iter().filter(|v| is_frame(v)).collect();
    if fb_frames.is_empty() {
        p.push("fallback: no frame lines".into());
    }
    p.extend(fb_frames.iter().filter_map(|v| frame_problem(v)));
    for f in &fb_frames {
        let fmt = f.get("format").and_then(Value::as_str).unwrap_or("");
        if fmt.is_empty() || fmt.eq_ignore_ascii_case("mjpeg") || fmt.eq_ignore_ascii_case("mjpg") {
            p.push(format!(
                "fallback: frame format {fmt:?}, want the format chosen instead of MJPEG"
            ));
        }
    }
    match summary(&fallback).and_then(|s| s["negotiated"].as_str()) {
        Some(n) if !n.to_ascii_uppercase().contains("MJP") && !n.is_empty() => {}
        Some(n) => p.push(format!(
            "fallback: summary says negotiated {n:?}, not the fallback"
        )),
        None => p.push("fallback: no summary line naming the negotiated format".into()),
    }
    if c.negotiated_log("fallback").is_none() {
        p.push("fallback: no \"negotiated:\" line in glimpse's log".into());
    }

    // Unplug: frames, camera_lost, camera_back, then frames again, in that order.
    for s in [
        "unplug:streaming",
        "unplug:disconnect",
        "unplug:lost-reported",
        "unplug:still-running",
        "unplug:rmmod",
        "unplug:replug",
        "capture:unplug",
    ] {
        need_step(&mut p, s);
    }
    let unplug = c.json("unplug", &mut p);
    let lost = unplug.iter().position(|v| event(v) == Some("camera_lost"));
    let back = unplug.iter().position(|v| event(v) == Some("camera_back"));
    match (lost, back) {
        (Some(l), Some(b)) if l < b => {
            if !unplug[..l].iter().any(is_frame) {
                p.push("unplug: no frames before camera_lost".into());
            }
            let after = unplug[b..].iter().filter(|v| is_frame(v)).count();
            if after < MIN_FRAMES_AFTER_RECONNECT {
                p.push(format!(
                    "unplug: {after} frames after camera_back, want >= {MIN_FRAMES_AFTER_RECONNECT}"
                ));
            }
        }
        (Some(_), Some(_)) => p.push("unplug: camera_back printed before camera_lost".into()),
        (None, _) => p.push("unplug: no {\"event\":\"camera_lost\"} line".into()),
        (Some(_), None) => {
            p.push("unplug: camera_lost but no {\"event\":\"camera_back\"} line".into())
        }
    }

    match c.done {
        Some(true) => {}
        Some(false) => p.push("the VM reported GLIMPSE-VM-DONE fail".into()),
        None => p.push("the VM never reached its end (GLIMPSE-VM-DONE missing)".into()),
    }
    p
}

#[test]
fn glimpse_captures_classifies_and_survives_unplug_on_vivid_in_a_vm() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("tests/vm/run.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_glimpse"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let console = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let parsed = Console::parse(&console);
    let mut found = problems(&parsed);
    if !output.status.success() {
        found.insert(0, format!("tests/vm/run.sh exited with {}", output.status));
    }
    if !found.is_empty() {
        let vm_lines: Vec<&str> = console
            .lines()
            .filter(|l| l.starts_with("GLIMPSE-VM-") && !l.starts_with("GLIMPSE-VM-V4L2"))
            .collect();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        panic!(
            "camera VM test: {} problem(s):\n  {}\n--- run.sh stderr ---\n{}\n--- VM lines ---\n{}\n--- console tail ---\n{}",
            found.len(),
            found.join("\n  "),
            stderr.trim_end(),
            vm_lines.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        );
    }
}

/// A console transcript of a run where everything worked, to check the checker.
fn good_console() -> String {
    let mut s = String::from("SeaBIOS\r\n\x1bc\x1b[2JGLIMPSE-VM-STEP boot ok kernel 6.1\r\n");
    for m in MODULES {
        s += &format!("GLIMPSE-VM-STEP module:{m} ok\n");
    }
    for step in ["device", "v4l2:formats", "v4l2:disconnect-control"] {
        s += &format!("GLIMPSE-VM-STEP {step} ok\n");
    }
    let frame = |fmt: &str, id: u32| {
        format!(
            r#"{{"frame_id":{id},"width":640,"height":480,"format":"{fmt}","top_k":[{{"index":1,"label":"tench","score":0.5}}],"latency_ms":900.0}}"#
        )
    };
    s += "GLIMPSE-VM-LOG yuyv negotiated: YUYV 640x480 @ 15 fps\n";
    for i in 0..5 {
        s += &format!("GLIMPSE-VM-OUT yuyv {}\n", frame("YUYV", i));
    }
    s += "GLIMPSE-VM-OUT yuyv {\"frames\":5,\"fps\":1.2,\"negotiated\":\"YUYV 640x480@15\"}\n";
    s += "GLIMPSE-VM-STEP capture:yuyv ok rc=0\n";
    s += "GLIMPSE-VM-LOG fallback negotiated: YUYV 640x480 (MJPEG not offered)\n";
    s += &format!("GLIMPSE-VM-OUT fallback {}\n", frame("YUYV", 0));
    s += "GLIMPSE-VM-OUT fallback {\"frames\":1,\"fps\":1.0,\"negotiated\":\"YUYV 640x480@15\"}\n";
    s += "GLIMPSE-VM-STEP capture:fallback ok rc=0\n";
    for step in [
        "streaming",
        "disconnect",
        "lost-reported",
        "still-running",
        "rmmod",
        "replug",
    ] {
        s += &format!("GLIMPSE-VM-STEP unplug:{step} ok\n");
    }
    s += &format!("GLIMPSE-VM-OUT unplug {}\n", frame("YUYV", 0));
    s += "GLIMPSE-VM-OUT unplug {\"event\":\"camera_lost\",\"error\":\"ENODEV\"}\n";
    s += "GLIMPSE-VM-OUT unplug {\"event\":\"camera_back\"}\n";
    for i in 1..3 {
        s += &format!("GLIMPSE-VM-OUT unplug {}\n", frame("YUYV", i));
    }
    s += "GLIMPSE-VM-STEP capture:unplug ok rc=0\nGLIMPSE-VM-DONE ok\n";
    s
}

#[test]
fn checker_accepts_a_complete_transcript() {
    assert_eq!(
        problems(&Console::parse(&good_console())),
        Vec::<String>::new()
    );
}

#[test]
fn checker_names_each_missing_piece() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "GLIMPSE-VM-STEP module:vivid ok",
            "GLIMPSE-VM-STEP module:vivid fail insmod: ENOENT",
            "step module:vivid failed",
        ),
        (
            "GLIMPSE-VM-STEP device ok",
            "",
            "step device never reported",
        ),
        (
            r#""label":"tench""#,
            r#""label":"""#,
            "frame without labelled top_k",
        ),
        (
            "\"format\":\"YUYV\",\"top_k\"",
            "\"format\":\"MJPEG\",\"top_k\"",
            "fallback: frame format \"MJPEG\"",
        ),
        (
            "GLIMPSE-VM-OUT unplug {\"event\":\"camera_back\"}",
            "",
            "no {\"event\":\"camera_back\"} line",
        ),
        ("GLIMPSE-VM-DONE ok", "", "never reached its end"),
    ];
    for (from, to, want) in cases {
        let text = good_console().replace(from, to);
        let found = problems(&Console::parse(&text));
        assert!(
            found.iter().any(|p| p.contains(want)),
            "replacing {from:?} should report {want:?}, got {found:?}"
        );
    }
}

#[test]
fn checker_wants_frames_after_the_camera_is_back() {
    let text = good_console();
    let cut = text
        .find("GLIMPSE-VM-OUT unplug {\"event\":\"camera_back\"}")
        .unwrap();
    let end = text.find("GLIMPSE-VM-STEP capture:unplug").unwrap();
    let text = format!(
        "{}GLIMPSE-VM-OUT unplug {{\"event\":\"camera_back\"}}\n{}",
        &text[..cut],
        &text[end..]
    );
    let found = problems(&Console::parse(&text));
    assert!(
        found
            .iter()
            .any(|p| p.contains("0 frames after camera_back")),
        "{found:?}"
    );
}
