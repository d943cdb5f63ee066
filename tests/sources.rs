//! Frame sources end to end, through `glimpse::source::open` as the daemon uses them: replay of
//! the shared test images, an ffmpeg test pattern through `exec:`, restarts of an exiting child,
//! and the errors an operator sees for bad URIs.

use glimpse::source::mjpeg::looks_like_jpeg;
use glimpse::source::{open, FrameData, FrameSource, HealthState, SourceConfig};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn imagenet_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/imagenet")
}

fn config(uri: String) -> SourceConfig {
    SourceConfig {
        uri,
        ..SourceConfig::default()
    }
}

fn open_ok(cfg: &SourceConfig) -> Box<dyn FrameSource> {
    open(cfg).unwrap_or_else(|e| panic!("opening {}: {e}", cfg.uri))
}

fn encoded(data: FrameData) -> Vec<u8> {
    match data {
        FrameData::Encoded(bytes) => bytes,
        FrameData::Raw { format, .. } => panic!("expected encoded bytes, got raw {format:?}"),
    }
}

/// The images in the shared test directory, sorted by name, as the replay should list them.
fn expected_images() -> Vec<PathBuf> {
    let dir = imagenet_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} is missing ({e}): the shared test data", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                ["jpg", "jpeg", "png", "bmp"].contains(&x.to_ascii_lowercase().as_str())
            })
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "too few test images in {}", dir.display());
    files
}

#[test]
fn dir_replay_yields_every_image_in_order_then_ends() {
    let expected = expected_images();
    let mut cfg = config(format!("dir:{}", imagenet_dir().display()));
    cfg.replay_fps = 0.0;
    cfg.replay_loop = false;
    let mut src = open_ok(&cfg);
    assert!(
        src.describe()
            .contains(&format!("{} images", expected.len())),
        "{}",
        src.describe()
    );
    for (i, path) in expected.iter().enumerate() {
        let frame = src
            .next_frame()
            .unwrap_or_else(|e| panic!("frame {i}: {e}"))
            .unwrap_or_else(|| panic!("replay ended early at {i}"));
        assert_eq!(frame.id, i as u64);
        let want = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            encoded(frame.data) == want,
            "frame {i} is not {}",
            path.display()
        );
    }
    assert!(matches!(src.next_frame(), Ok(None)));
    assert!(matches!(src.next_frame(), Ok(None)), "stays ended");
    assert_eq!(src.health().state, HealthState::Ended);
    assert_eq!(src.health().frames, expected.len() as u64);
}

#[test]
fn dir_replay_loops_with_increasing_ids() {
    let expected = expected_images();
    let mut cfg = config(format!("dir:{}", imagenet_dir().display()));
    cfg.replay_fps = 0.0;
    let mut src = open_ok(&cfg);
    let n = expected.len();
    let frames: Vec<_> = (0..2 * n + 1)
        .map(|i| match src.next_frame() {
            Ok(Some(f)) => f,
            other => panic!("frame {i}: {other:?}"),
        })
        .collect();
    let ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    assert_eq!(ids, (0..(2 * n + 1) as u64).collect::<Vec<_>>());
    assert!(frames[0].data == frames[n].data && frames[n].data == frames[2 * n].data);
    assert!(frames[0].data != frames[1].data);
}

#[test]
fn dir_replay_is_paced_by_replay_fps() {
    // Only a lower bound: a paced source never runs faster than asked (a loaded machine may
    // make it slower, which says nothing about pacing).
    let mut cfg = config(format!("dir:{}", imagenet_dir().display()));
    cfg.replay_fps = 20.0;
    let mut src = open_ok(&cfg);
    let t0 = Instant::now();
    for _ in 0..6 {
        assert!(matches!(src.next_frame(), Ok(Some(_))));
    }
    let elapsed = t0.elapsed();
    // Six frames at 20 fps: the first is immediate, five periods of 50 ms follow.
    assert!(
        elapsed >= Duration::from_millis(240),
        "6 frames at 20 fps took only {elapsed:?}"
    );
}

#[test]
fn file_replay_repeats_one_image() {
    let path = expected_images().remove(0);
    let mut cfg = config(format!("file:{}", path.display()));
    cfg.replay_fps = 0.0;
    let mut src = open_ok(&cfg);
    let a = src.next_frame().ok().flatten().map(|f| encoded(f.data));
    let b = src.next_frame().ok().flatten().map(|f| encoded(f.data));
    assert!(a.is_some() && a == b);
}

fn require_ffmpeg() {
    let found = Command::new("ffmpeg").arg("-version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "ffmpeg is required for the exec: source tests (apt-get install ffmpeg)"
    );
}

const TEST_PATTERN: &str = "ffmpeg -hide_banner -loglevel error -f lavfi -i \
     testsrc=size=320x240:rate=10 -t 2 -f mjpeg -";

#[test]
fn exec_ffmpeg_test_pattern_yields_decodable_jpegs() {
    require_ffmpeg();
    let mut src = open_ok(&config(format!("exec:{TEST_PATTERN}")));
    let mut frames = Vec::new();
    for i in 0..15 {
        match src.next_frame() {
            Ok(Some(f)) => frames.push(f),
            other => panic!("frame {i}: {other:?}"),
        }
    }
    let ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    assert_eq!(ids, (0..15).collect::<Vec<u64>>());
    let jpegs: Vec<Vec<u8>> = frames.into_iter().map(|f| encoded(f.data)).collect();
    for (i, j) in jpegs.iter().enumerate() {
        assert!(
            looks_like_jpeg(j),
            "frame {i} lacks SOI/EOI ({} bytes)",
            j.len()
        );
    }
    let img = image::load_from_memory_with_format(&jpegs[3], image::ImageFormat::Jpeg)
        .unwrap_or_else(|e| panic!("frame 3 does not decode: {e}"));
    assert_eq!((img.width(), img.height()), (320, 240));
    // testsrc moves: consecutive frames differ.
    assert!(jpegs[3] != jpegs[4]);
    assert!(
        src.describe().starts_with("exec:ffmpeg"),
        "{}",
        src.describe()
    );
}

#[test]
fn exec_child_that_exits_is_restarted() {
    require_ffmpeg();
    // Each child writes 3 frames and exits; 8 frames need at least two restarts.
    let cmd = "ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc=size=64x48:rate=10 \
               -frames:v 3 -f mjpeg -";
    let mut cfg = config(format!("exec:{cmd}"));
    cfg.restart_backoff_max_s = 0.05;
    let mut src = open_ok(&cfg);
    for i in 0..8u64 {
        match src.next_frame() {
            Ok(Some(f)) => {
                assert_eq!(f.id, i);
                assert!(looks_like_jpeg(&encoded(f.data)));
            }
            other => panic!("frame {i}: {other:?}"),
        }
    }
    let h = src.health();
    assert!(h.restarts >= 2, "{h:?}");
    assert_eq!(h.frames, 8);
    assert_eq!(h.state, HealthState::Ok);
}

#[test]
fn exec_child_that_fails_reports_reconnecting_with_its_stderr() {
    // The command fails at once, forever: next_frame would block, so watch health from another
    // thread through the probe, as the daemon does.
    let mut cfg = config("exec:echo 'no camera here' >&2; exit 7".into());
    cfg.restart_backoff_max_s = 0.05;
    let mut src = open_ok(&cfg);
    let probe = src.health_probe();
    std::thread::spawn(move || {
        let _ = src.next_frame();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = probe.get();
        if let HealthState::Reconnecting { last_error, .. } = &h.state {
            if h.restarts >= 2
                && last_error.contains("exited with status 7")
                && last_error.contains("last stderr: no camera here")
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no restarts reported: {h:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_uris_and_paths_give_clear_errors() {
    let cases = [
        ("webcam0".to_string(), "no scheme"),
        ("http://x/stream".to_string(), "unknown scheme \"http\""),
        ("camera:zero".to_string(), "not a number"),
        ("exec:".to_string(), "empty command"),
        ("dir:/nonexistent/glimpse-frames".to_string(), "cannot list"),
        (
            format!("dir:{}", env!("CARGO_MANIFEST_DIR")),
            "no images to replay",
        ),
        ("file:/nonexistent/x.jpg".to_string(), "cannot open"),
        ("v4l2:///nonexistent/video0".to_string(), "cannot resolve"),
    ];
    for (uri, needle) in cases {
        let msg = match open(&config(uri.clone())) {
            Ok(s) => panic!("{uri} opened as {}", s.describe()),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(needle), "{uri}: {msg}");
        let named = msg.contains(&uri) || msg.contains(uri.split_once(':').map_or("", |p| p.1));
        assert!(named, "{uri}: error does not name it: {msg}");
    }
}

#[test]
fn bad_settings_name_the_key() {
    let mut cfg = config(format!("dir:{}", imagenet_dir().display()));
    cfg.fps = -1.0;
    let msg = open(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("source.fps"), "{msg}");
}
