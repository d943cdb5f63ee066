//! `glimpse studio` (issue 14), end to end: the real binary relaying between HTTP and a real
//! Mosquitto, in front of a real `glimpse run` replaying a photo of a hand showing rock.
//!
//! - the relay: the token on every request and the live stream, the CSRF header, the device's
//!   acks handed back (`accepted`, `duplicate`, a frame label), clear refusals (bad label,
//!   oversized body, malformed JSON, unknown command, unknown device), the daemon's
//!   `frame/thumbnail` (tagged with its frame id, bounded), a retrain and live predictions;
//! - the page in a real browser (Debian's chromium, headless, phone-sized, driven over
//!   chromedriver's WebDriver API): device online with a thumbnail, photos uploaded with per-file
//!   acks, one tap labels the current frame, retrain, the live prediction shows the taught
//!   class; a wrong token is refused and hostile labels are refused or shown as text.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use base64::Engine;
use common::studio::{poll, start_daemon, start_studio, Browser, DEVICE};
use common::Mosquitto;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TOKEN: &str = "studio-test-token-0123456789";
/// Generous: two daemons share two small CPUs with other builds.
const LONG: Duration = Duration::from_secs(180);

fn token_file(dir: &Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path.display().to_string()
}

/// The studio's base URL (`http://127.0.0.1:PORT`) from the URL it printed.
fn base_of(printed: &str) -> String {
    printed
        .split("/?")
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

/// Reads the live stream on a thread; yields `(event, data)` pairs.
fn live_events(base: &str) -> Receiver<(String, Value)> {
    let response = ureq::get(&format!("{base}/api/events?token={TOKEN}"))
        .call()
        .expect("open the live stream");
    assert_eq!(response.content_type(), "text/event-stream");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let value = serde_json::from_str(data).expect("event data is JSON");
                if tx.send((event.clone(), value)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The first live event matching `pred` within `limit`.
fn next_event(
    rx: &Receiver<(String, Value)>,
    what: &str,
    pred: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + LONG;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((event, data)) if pred(&event, &data) => return data,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no live event: {what}");
}

/// POSTs with the token and the page's CSRF header; (status, JSON body).
fn post(base: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let result = ureq::post(&format!("{base}{path}"))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .set("x-glimpse-studio", "1")
        .send_bytes(body);
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(err) => panic!("POST {path}: {err}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")),
    )
}

fn status_of(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(err) => panic!("request failed: {err}"),
    }
}

#[test]
fn the_relay_hands_back_acks_and_refuses_hostile_requests_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rock = common::rps_full_photos("rock", 4);
    let paper = common::rps_full_photos("paper", 3);
    let daemon = start_daemon(dir.path(), &broker, &rock[3]);
    let tokens = token_file(dir.path());
    let (studio, printed) = start_studio(
        dir.path(),
        &broker,
        &[
            "--token-file",
            &tokens,
            "--username",
            "operator",
            "--password-env",
            "STUDIO_TEST_PASSWORD",
        ],
    );
    assert!(printed.ends_with(&format!("?token={TOKEN}")), "{printed}");
    let base = base_of(&printed);

    // The token guards the page, the API and the live stream alike.
    for url in [
        format!("{base}/"),
        format!("{base}/api/events"),
        format!("{base}/app.js?token=wrong-token-0123456789"),
    ] {
        let (code, body) = status_of(ureq::get(&url).call());
        assert_eq!(code, 401, "{url}: {body}");
        assert!(body.contains("missing or wrong access token"), "{body}");
    }
    let page = ureq::get(&format!("{base}/?token={TOKEN}")).call().unwrap();
    let csp = page
        .header("content-security-policy")
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.into_string().unwrap().contains("glimpse studio"));
    let (code, body) = status_of(
        ureq::post(&format!(
            "{base}/api/devices/{DEVICE}/command/labels?token={TOKEN}"
        ))
        .send_bytes(b"{}"),
    );
    assert_eq!(code, 403, "a POST without the page's header: {body}");

    // The device comes online, and its thumbnails (tagged JPEGs, small) reach the stream.
    let events = live_events(&base);
    next_event(&events, "cam1 online", |e, d| {
        e == "device" && d["device"] == DEVICE && d["availability"] == "online"
    });
    let thumb = next_event(&events, "a thumbnail", |e, d| {
        e == "thumbnail" && d["device"] == DEVICE && d["frame_id"].is_u64()
    });
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(thumb["jpeg"].as_str().unwrap())
        .unwrap();
    assert!(
        jpeg.starts_with(&[0xFF, 0xD8]) && jpeg.len() < 64 * 1024,
        "{} bytes",
        jpeg.len()
    );
    let decoded = image::load_from_memory(&jpeg).expect("the thumbnail decodes");
    assert!(decoded.width().max(decoded.height()) <= 96);
    next_event(&events, "the device's size limit", |e, d| {
        e == "device" && d["max_sample_bytes"] == 4 << 20
    });

    // Photos: the device's ack comes back, matched by the bytes' sha256 and the label.
    let bytes = std::fs::read(&rock[0]).unwrap();
    let (code, ack) = post(
        &base,
        &format!("/api/devices/{DEVICE}/photo?label=rock"),
        &bytes,
    );
    assert_eq!(
        (code, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}"
    );
    assert_eq!(ack["id"], hex_sha256(&bytes));
    let (_, again) = post(
        &base,
        &format!("/api/devices/{DEVICE}/photo?label=rock"),
        &bytes,
    );
    assert_eq!(again["status"], "duplicate", "{again}");
    for photo in &rock[1..3] {
        let (_, ack) = post(
            &base,
            &format!("/api/devices/{DEVICE}/photo?label=rock"),
            &std::fs::read(photo).unwrap(),
        );
        assert_eq!(ack["status"], "accepted", "{ack}");
    }
    for photo in &paper {
        let (_, ack) = post(
            &base,
            &format!("/api/devices/{DEVICE}/photo?label=paper"),
            &std::fs::read(photo).unwrap(),
        );
        assert_eq!(ack["status"], "accepted", "{ack}");
    }
    next_event(&events, "samples per label", |e, d| {
        e == "device" && d["labels"] == json!({"paper": 3, "rock": 3})
    });

    // One tap: the frame a thumbnail shown now names, no upload.
    let fresh = next_event(&events, "a fresh thumbnail", |e, d| {
        e == "thumbnail" && d["frame_id"].is_u64()
    });
    let frame = fresh["frame_id"].as_u64().unwrap();
    let request = json!({"label": "rock", "frame_id": frame}).to_string();
    let (code, ack) = post(
        &base,
        &format!("/api/devices/{DEVICE}/frame"),
        request.as_bytes(),
    );
    assert_eq!(
        (code, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}"
    );
    assert_eq!(ack["count"], 4, "{ack}");

    // Hostile requests get clear answers, before anything is published.
    let cases: [(&str, &[u8], u16, &str); 6] = [
        ("/photo?label=a%2Fb", b"x", 400, "not allowed"),
        ("/photo?label=%20rock", b"x", 400, "white space"),
        ("/photo?label=rock", b"", 400, "empty"),
        (
            "/frame",
            b"{\"label\": \"rock\", \"frame_id\": ",
            400,
            "malformed request",
        ),
        ("/command/export", b"{}", 400, "unknown command"),
        (
            "/command/forget",
            b"{\"label\": \"x#y\"}",
            400,
            "not allowed",
        ),
    ];
    for (path, body, status, text) in cases {
        let (code, answer) = post(&base, &format!("/api/devices/{DEVICE}{path}"), body);
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(code, status, "{path}: {answer}");
        assert!(error.contains(text), "{path}: {error}");
    }
    let (code, answer) = post(&base, "/api/devices/ghost/command/labels", b"{}");
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("never announced"),
        "{answer}"
    );
    // Over the device's limit: refused from the declared length, before the body is read.
    let address = base.trim_start_matches("http://");
    let mut raw = TcpStream::connect(address).unwrap();
    write!(
        raw,
        "POST /api/devices/{DEVICE}/photo?label=rock HTTP/1.1\r\nhost: {address}\r\n\
         authorization: Bearer {TOKEN}\r\nx-glimpse-studio: 1\r\n\
         content-length: {}\r\n\r\n",
        (4 << 20) + 1
    )
    .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = [0u8; 512];
    let n = raw.read(&mut head).unwrap();
    let reply = String::from_utf8_lossy(&head[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // Retrain, and the live prediction turns to the taught class.
    let (code, ack) = post(
        &base,
        &format!("/api/devices/{DEVICE}/command/retrain"),
        b"",
    );
    assert_eq!(
        (code, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}\n{}",
        daemon.log()
    );
    assert!(ack["head_version"].is_u64(), "{ack}");
    next_event(&events, "a prediction of rock", |e, d| {
        e == "prediction" && d["prediction"]["label"] == "rock"
    });
    next_event(&events, "the training report", |e, d| {
        e == "device" && d["report"]["classes"] == json!(["paper", "rock"])
    });

    // Roll back with no older version: the device's refusal comes back as its ack. Forget a
    // label: its samples go, and with one label left no head stays active.
    let (code, ack) = post(
        &base,
        &format!("/api/devices/{DEVICE}/command/rollback"),
        b"",
    );
    assert_eq!(
        (code, ack["status"].as_str()),
        (200, Some("rejected")),
        "{ack}"
    );
    assert!(
        ack["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{ack}"
    );
    let (code, ack) = post(
        &base,
        &format!("/api/devices/{DEVICE}/command/forget"),
        br#"{"label": "paper"}"#,
    );
    assert_eq!(
        (code, ack["status"].as_str()),
        (200, Some("accepted")),
        "{ack}"
    );
    assert_eq!(
        (ack["deleted"].as_u64(), ack["head_version"].as_u64()),
        (Some(3), None),
        "{ack}"
    );
    next_event(&events, "samples per label after the forget", |e, d| {
        e == "device" && d["labels"] == json!({"rock": 4})
    });

    // The broker password never reaches the studio's output.
    let log = studio.log();
    assert!(!log.contains("hunter2-studio"), "{log}");
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Text of the elements matching `css`, via the page's own DOM (what the operator sees).
fn texts(browser: &Browser, css: &str) -> Vec<String> {
    let value = browser.eval(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);",
        json!([css]),
    );
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_texts(browser: &Browser, css: &str, what: &str, pred: impl Fn(&[String]) -> bool) {
    poll(LONG, || pred(&texts(browser, css)).then_some(()))
        .unwrap_or_else(|| panic!("{what}: {css} shows {:?}", texts(browser, css)));
}

#[test]
fn a_phone_browser_teaches_a_device_and_watches_it_predict() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rock = common::rps_full_photos("rock", 5);
    let paper = common::rps_full_photos("paper", 4);
    let daemon = start_daemon(dir.path(), &broker, &rock[4]);
    let tokens = token_file(dir.path());
    let (_studio, printed) = start_studio(dir.path(), &broker, &["--token-file", &tokens]);
    let base = base_of(&printed);
    let browser = Browser::start(dir.path());

    // A wrong token gets the refusal, not the page.
    browser.open(&format!("{base}/?token=not-the-token-0000000"));
    let body = browser.eval("return document.body.textContent;", json!([]));
    assert!(
        body.as_str()
            .unwrap_or("")
            .contains("missing or wrong access token"),
        "{body}"
    );
    assert!(texts(&browser, "article.card").is_empty());

    browser.open(&printed);
    let card = format!("article[data-device=\"{DEVICE}\"]");
    wait_texts(
        &browser,
        &format!("{card} .status"),
        "the device online",
        |t| t == ["online"],
    );
    poll(LONG, || {
        let src = browser.eval(
            "const i = document.querySelector(arguments[0]); return i && i.src;",
            json!([format!("{card} img.thumb")]),
        );
        src.as_str()
            .is_some_and(|s| s.starts_with("data:image/jpeg;base64,"))
            .then_some(())
    })
    .expect("a thumbnail appears");

    // Photos from the "camera": several files at once, each with its progress and ack.
    for (label, photos) in [("rock", &rock[..4]), ("paper", &paper[..])] {
        browser.eval(
            "const i = document.querySelector(arguments[0]); i.value = arguments[1];",
            json!([format!("{card} .photo-label"), label]),
        );
        // chromedriver wants canonical paths (no `..`).
        let paths: Vec<String> = photos
            .iter()
            .map(|p| p.canonicalize().unwrap().display().to_string())
            .collect();
        browser.type_into(&format!("{card} input.photos"), &paths.join("\n"));
        let n = photos.len();
        wait_texts(
            &browser,
            &format!("{card} ul.files .ack"),
            "every upload acked",
            |t| t.len() == n && t.iter().all(|a| a.starts_with("accepted")),
        );
    }

    // One tap labels the frame on screen.
    browser.click(&format!("{card} .label-button[data-label=\"rock\"]"));
    wait_texts(
        &browser,
        &format!("{card} .frame-ack"),
        "the frame label's ack",
        |t| t.first().is_some_and(|a| a.starts_with("accepted")),
    );

    browser.click(&format!("{card} button.retrain"));
    wait_texts(
        &browser,
        &format!("{card} .command-ack"),
        "the retrain's ack",
        |t| t.first().is_some_and(|a| a.starts_with("accepted")),
    );
    wait_texts(
        &browser,
        &format!("{card} .prediction"),
        "the live prediction",
        |t| t.first().is_some_and(|p| p.starts_with("rock ")),
    );
    wait_texts(
        &browser,
        &format!("{card} table.confusion th"),
        "the confusion matrix",
        |t| t.iter().any(|h| h == "paper") && t.iter().any(|h| h == "rock"),
    );

    // Screenshot of the taught page on a phone-sized viewport (docs/studio.png is made this way:
    // GLIMPSE_STUDIO_SCREENSHOT=docs/studio.png cargo test --test studio phone).
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = std::env::var("GLIMPSE_STUDIO_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("studio.png"));
    std::fs::write(&shot, &png).unwrap();

    // Hostile labels: `/` is refused with the device's rule; markup is stored as text and shown
    // as text (no element made, no handler run).
    browser.eval(
        "const i = document.querySelector(arguments[0]); i.value = 'a/b';",
        json!([format!("{card} .new-label")]),
    );
    browser.click(&format!("{card} button.add-label"));
    wait_texts(
        &browser,
        &format!("{card} .frame-ack"),
        "a/b refused",
        |t| t.first().is_some_and(|a| a.contains("not allowed")),
    );
    let hostile = "<img src=x onerror=window.pwned=1>";
    browser.eval(
        "const i = document.querySelector(arguments[0]); i.value = arguments[1];",
        json!([format!("{card} .new-label"), hostile]),
    );
    browser.click(&format!("{card} button.add-label"));
    wait_texts(
        &browser,
        &format!("{card} .label-button"),
        "the markup label as text",
        |t| t.iter().any(|b| b == hostile),
    );
    let injected = browser.eval(
        "return [window.pwned === undefined, document.querySelectorAll('img').length];",
        json!([]),
    );
    assert_eq!(injected, json!([true, 1]), "{}", daemon.log());
    assert!(browser.driver_log().len() < 10 << 20);
}
