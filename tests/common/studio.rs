//! Harness for the studio tests (tests/studio.rs): a real `glimpse run` replaying a photo with
//! thumbnails on, a `glimpse studio` process whose printed URL is read back, and a minimal W3C
//! WebDriver client for Debian's chromium + chromedriver (no Node, no Selenium).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemon::{Daemon, DaemonConfig, GLIMPSE};
use super::Mosquitto;

pub const DEVICE: &str = "cam1";
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A child process killed on drop, with its log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `glimpse run` on a `dir:` source replaying `photo` in a loop, publishing a thumbnail every
/// 500 ms, no automatic retraining (the tests retrain by hand).
pub fn start_daemon(dir: &Path, broker: &Mosquitto, photo: &Path) -> Daemon {
    let source = dir.join("scene");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::copy(photo, source.join("000_scene.jpg")).expect("copy the scene photo");
    Daemon::start(
        DaemonConfig::new(dir, broker, DEVICE)
            .source_dir(&source)
            .set("mqtt.stats_interval_s", 2)
            .set("mqtt.thumbnail_interval_ms", 500),
    )
}

/// `glimpse studio` on a free loopback port; returns the process and the URL it printed
/// (with `?token=` when it has one).
pub fn start_studio(dir: &Path, broker: &Mosquitto, extra: &[&str]) -> (Proc, String) {
    let log = dir.join("studio.log");
    let mut child = Command::new(GLIMPSE)
        .args(["studio", "--url", &broker.url(), "--listen", "127.0.0.1:0"])
        .args(["--timeout-s", "90"])
        .args(extra)
        // For tests that pass --password-env: a secret that must never appear in the output.
        .env("STUDIO_TEST_PASSWORD", "hunter2-studio")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(&log).expect("studio log"),
        ))
        .spawn()
        .expect("spawn glimpse studio");
    let stdout = child.stdout.take().expect("studio stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the studio's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the studio's first line {line:?}"))
        .to_string();
    (Proc { child, log }, url)
}

/// Polls `probe` every 250 ms until it returns `Some` or `limit` passes.
pub fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// POSTs `body` as JSON (ureq is built without its `json` feature).
fn send_json(request: ureq::Request, body: &Value) -> Result<ureq::Response, Box<ureq::Error>> {
    request
        .set("content-type", "application/json")
        .send_string(&body.to_string())
        .map_err(Box::new)
}

/// A response body as JSON.
fn json_of(response: ureq::Response) -> Value {
    let text = response.into_string().expect("response body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A headless chromium session driven over chromedriver's W3C WebDriver HTTP API.
pub struct Browser {
    driver: Proc,
    base: String,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a phone-sized window (390 x 844).
    /// Missing packages fail the test: they are prerequisites (`.ci/run` installs them).
    pub fn start(dir: &Path) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} not found: install chromium and chromium-driver (apt-get install -y \
                 chromium chromium-driver; .ci/run does)"
            );
        }
        let port = super::free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = Proc { child, log };
        let base = format!("http://127.0.0.1:{port}");
        poll(Duration::from_secs(20), || {
            ureq::get(&format!("{base}/status")).call().ok()
        })
        .unwrap_or_else(|| panic!("chromedriver did not start:\n{}", driver.log()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=390,844",
                         format!("--user-data-dir={}", dir.join("chromium").display())],
                "mobileEmulation": {"deviceMetrics": {"width": 390, "height": 844,
                                                      "pixelRatio": 1.0}}
            }
        }}});
        let reply = send_json(ureq::post(&format!("{base}/session")), &caps)
            .unwrap_or_else(|e| panic!("new session: {e}\n{}", driver.log()));
        let reply = json_of(reply);
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {reply}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = ureq::request(method, &url);
        let result = match body {
            Some(body) => send_json(request, &body),
            None => request.call().map_err(Box::new),
        };
        match result.map_err(|e| *e) {
            Ok(response) => json_of(response)["value"].take(),
            Err(ureq::Error::Status(code, response)) => {
                panic!(
                    "webdriver {method} {path}: {code} {}",
                    response.into_string().unwrap_or_default()
                )
            }
            Err(err) => panic!("webdriver {method} {path}: {err}"),
        }
    }

    pub fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The WebDriver reference of the first element matching `css`, waiting up to `limit`.
    pub fn find(&self, css: &str, limit: Duration) -> Value {
        let url = format!("{}/session/{}/element", self.base, self.session);
        poll(limit, || {
            let query = json!({ "using": "css selector", "value": css });
            let value = json_of(send_json(ureq::post(&url), &query).ok()?);
            Some(value["value"].clone())
        })
        .unwrap_or_else(|| panic!("no element {css} within {limit:?}"))
    }

    fn element_id(element: &Value) -> String {
        element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element reference")
            .to_string()
    }

    pub fn click(&self, css: &str) {
        let id = Self::element_id(&self.find(css, Duration::from_secs(30)));
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the element (for `<input type=file>`, newline-separated paths).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = Self::element_id(&self.find(css, Duration::from_secs(30)));
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The page as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 screenshot"))
            .expect("screenshot base64")
    }

    pub fn driver_log(&self) -> String {
        self.driver.log()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = ureq::delete(&url).call();
    }
}
