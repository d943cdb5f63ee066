//! Frame sources: where frames come from, behind one `FrameSource` trait.
//!
//! A source yields encoded bytes (JPEG/PNG/BMP file, MJPEG frame) or raw pixels plus their
//! format; it never decodes (decoding belongs to the pipeline, so a slow decode cannot stall a
//! camera's buffer queue and every source shares one decoder). Sources are built from their
//! config section, like Vector's components: `uri = "camera:0" | "v4l2:///dev/video0" |
//! "exec:<command>" | "dir:<path>" | "file:<path>"`.
//!
//! Live sources (camera, exec) treat failures as weather: they retry inside `next_frame` with a
//! capped exponential backoff and report it through `SourceHealth`, so the daemon keeps running
//! and the operator sees "reconnecting" instead of a dead process.

pub mod backoff;
pub mod camera;
pub mod dir;
pub mod exec;
pub mod mjpeg;
pub mod negotiate;
#[cfg(feature = "camera")]
pub mod nokhwa_device;

pub use backoff::Backoff;
pub use mjpeg::MjpegSplitter;
pub use negotiate::{negotiate, Choice, NegotiationError, OfferedFormat, Request};

use crate::vision::preprocess::PixelFormat;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One captured frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Monotonically increasing per source, across reconnects and restarts (operators label
    /// "frame 1234", so an id must never be reused by the same source).
    pub id: u64,
    /// Wall-clock time of arrival, for display only (`captured_at_ms`): a board without an RTC
    /// boots in 1970 and jumps when NTP syncs.
    pub captured_at: SystemTime,
    /// Monotonic time of arrival: latencies are measured from this, never from `captured_at`.
    pub received: Instant,
    pub data: FrameData,
}

/// The bytes of a frame, undecoded.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameData {
    /// JPEG/PNG/BMP file bytes or one MJPEG frame.
    Encoded(Vec<u8>),
    /// Raw pixels as the device delivered them.
    Raw {
        format: PixelFormat,
        width: u32,
        height: u32,
        bytes: Vec<u8>,
    },
}

impl FrameData {
    /// Size of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Encoded(b) | Self::Raw { bytes: b, .. } => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a source stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HealthState {
    #[default]
    Ok,
    /// Retrying after a failure; `attempt` counts retries since the last good stretch.
    Reconnecting { attempt: u32, last_error: String },
    /// A non-looping replay delivered its last frame.
    Ended,
}

/// Health plus counters, as reported to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceHealth {
    pub state: HealthState,
    /// Frames delivered.
    pub frames: u64,
    /// Camera reopens that succeeded after a failure.
    pub reopens: u64,
    /// Exec children started after the first one.
    pub restarts: u64,
}

/// A shared view of a source's health. `next_frame` blocks while a source reconnects, so the
/// daemon reads health through a probe from another thread instead of through `&self`.
#[derive(Debug, Clone, Default)]
pub struct HealthProbe(Arc<Mutex<SourceHealth>>);

impl HealthProbe {
    pub fn get(&self) -> SourceHealth {
        self.lock().clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SourceHealth)) {
        f(&mut self.lock());
    }

    pub(crate) fn set_state(&self, state: HealthState) {
        self.update(|h| h.state = state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceHealth> {
        // A panic elsewhere while holding this lock leaves plain data behind: still readable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hands out frame ids and stamps frames, counting them in the health.
#[derive(Debug, Default)]
pub(crate) struct FrameStamper {
    next_id: u64,
}

impl FrameStamper {
    pub(crate) fn stamp(&mut self, data: FrameData, probe: &HealthProbe) -> Frame {
        let id = self.next_id;
        self.next_id += 1;
        probe.update(|h| {
            h.frames += 1;
            h.state = HealthState::Ok;
        });
        Frame {
            id,
            captured_at: SystemTime::now(),
            received: Instant::now(),
            data,
        }
    }
}

/// How live sources wait between retries. Injected so tests record delays instead of sleeping.
pub type Sleeper = Box<dyn FnMut(Duration) + Send>;

pub(crate) fn real_sleeper() -> Sleeper {
    Box::new(std::thread::sleep)
}

/// Anything that produces frames.
pub trait FrameSource: Send {
    /// Blocks until the next frame. Ok(None) = the source ended for good (non-looping dir/file
    /// replay). Transient failures (camera unplugged, child exited) are handled INSIDE with
    /// capped exponential backoff and reported through the health state, not returned, so the
    /// daemon keeps running.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;

    /// One line for logs, e.g. "camera:0 640x480 MJPEG @30fps (negotiated)".
    fn describe(&self) -> String;

    /// A handle that reads this source's health from any thread.
    fn health_probe(&self) -> HealthProbe;

    /// True when the source has no clock of its own (an unpaced dir/file replay): the consumer
    /// then decides the rate, and asking for frames it cannot take only burns CPU. Live sources
    /// (camera, exec) keep the default `false`: they must be drained or their buffers go stale.
    fn paced_by_consumer(&self) -> bool {
        false
    }

    /// Health and counters now.
    fn health(&self) -> SourceHealth {
        self.health_probe().get()
    }

    /// A handle that another thread uses at shutdown to end a `next_frame` blocked on something
    /// outside the process (an `exec:` child that writes nothing), and to stop what the source
    /// started even if the capture thread never returns. `None`: nothing to interrupt.
    fn interrupter(&self) -> Option<Arc<dyn Interrupt>> {
        None
    }
}

/// Ends a source's blocking read from another thread (see [`FrameSource::interrupter`]).
pub trait Interrupt: Send + Sync {
    /// Asks the source to stop: no restart after this; its processes get SIGTERM, or SIGKILL
    /// when `force`.
    fn interrupt(&self, force: bool);
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad source URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("bad source setting `{key}`: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("{}: {reason}", path.display())]
    Replay { path: PathBuf, reason: String },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("exec source `{command}`: cannot start `sh -c`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{device}: {reason}")]
    Camera { device: String, reason: String },
    #[error("{uri}: this glimpse was built without the `camera` feature (V4L2 via nokhwa)")]
    CameraDisabled { uri: String },
}

/// A parsed `source.uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    Camera { index: u32 },
    V4l2 { path: PathBuf },
    Exec { command: String },
    Dir { path: PathBuf },
    File { path: PathBuf },
}

const URI_FORMS: &str =
    "expected camera:N, v4l2:///dev/videoN, exec:<shell command>, dir:<path> or file:<path>";

impl FromStr for SourceUri {
    type Err = SourceError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| SourceError::BadUri {
            uri: uri.to_string(),
            reason,
        };
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(bad(format!("no scheme; {URI_FORMS}")));
        };
        // `dir:///abs` and `file:///abs` read like URLs; `dir:rel` stays relative.
        let path_of = |rest: &str, what: &str| {
            let p = rest.strip_prefix("//").unwrap_or(rest);
            if p.trim().is_empty() {
                Err(bad(format!("empty {what} path")))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match scheme {
            "camera" => rest
                .trim()
                .parse::<u32>()
                .map(|index| Self::Camera { index })
                .map_err(|_| bad(format!("camera index {rest:?} is not a number (camera:0)"))),
            "v4l2" => {
                let path = path_of(rest, "device")?;
                if !path.is_absolute() {
                    return Err(bad(
                        "device path must be absolute (v4l2:///dev/video0)".into()
                    ));
                }
                Ok(Self::V4l2 { path })
            }
            "exec" => {
                if rest.trim().is_empty() {
                    Err(bad("empty command".into()))
                } else {
                    Ok(Self::Exec {
                        command: rest.to_string(),
                    })
                }
            }
            "dir" => Ok(Self::Dir {
                path: path_of(rest, "directory")?,
            }),
            "file" => Ok(Self::File {
                path: path_of(rest, "file")?,
            }),
            other => Err(bad(format!("unknown scheme {other:?}; {URI_FORMS}"))),
        }
    }
}

impl fmt::Display for SourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Camera { index } => write!(f, "camera:{index}"),
            Self::V4l2 { path } => write!(f, "v4l2://{}", path.display()),
            Self::Exec { command } => write!(f, "exec:{command}"),
            Self::Dir { path } => write!(f, "dir:{}", path.display()),
            Self::File { path } => write!(f, "file:{}", path.display()),
        }
    }
}

/// The V4L2 index of a device node: nokhwa opens cameras by index only, and `/dev/videoN` is
/// index N. Symlinks (`/dev/v4l/by-id/...`) must be resolved by the caller first.
pub fn v4l2_index(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("video")?
        .parse()
        .ok()
}

/// Which pixel format to ask a camera for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatPreference {
    /// MJPEG preferred, YUYV fallback, then RGB.
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
    Rgb,
}

impl fmt::Display for FormatPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Mjpeg => "MJPEG",
            Self::Yuyv => "YUYV",
            Self::Rgb => "RGB",
        })
    }
}

/// The `[source]` config section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    pub uri: String,
    pub width: u32,
    pub height: u32,
    pub fps: f32,
    pub format: FormatPreference,
    /// Frames per second for dir/file replay; 0 = as fast as the consumer pulls.
    pub replay_fps: f32,
    pub replay_loop: bool,
    /// Cap of the reconnect/restart backoff, in seconds.
    pub restart_backoff_max_s: f32,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            uri: "camera:0".into(),
            width: 640,
            height: 480,
            fps: 15.0,
            format: FormatPreference::Auto,
            replay_fps: 5.0,
            replay_loop: true,
            restart_backoff_max_s: 30.0,
        }
    }
}

/// First retry delay of live sources (capped by `restart_backoff_max_s`).
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);

impl SourceConfig {
    /// Checks value ranges; errors name the key.
    pub fn validate(&self) -> Result<(), SourceError> {
        let cfg = |key, reason: String| Err(SourceError::Config { key, reason });
        if self.width == 0 || self.height == 0 {
            return cfg(
                "source.width/height",
                format!("must be > 0 (got {}x{})", self.width, self.height),
            );
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return cfg("source.fps", format!("must be > 0 (got {})", self.fps));
        }
        if !(self.replay_fps.is_finite() && self.replay_fps >= 0.0) {
            return cfg(
                "source.replay_fps",
                format!("must be >= 0 (got {})", self.replay_fps),
            );
        }
        if !(self.restart_backoff_max_s.is_finite() && self.restart_backoff_max_s > 0.0) {
            return cfg(
                "source.restart_backoff_max_s",
                format!("must be > 0 (got {})", self.restart_backoff_max_s),
            );
        }
        Ok(())
    }

    /// The camera request this config describes.
    pub fn request(&self) -> Request {
        Request {
            width: self.width,
            height: self.height,
            fps: self.fps,
            format: self.format,
        }
    }

    /// A fresh backoff for a live source.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            BACKOFF_BASE,
            Duration::from_secs_f32(self.restart_backoff_max_s),
        )
    }
}

/// Builds the source a config describes. Dir/file sources list their files now, cameras open
/// now (a daemon that cannot see its camera at start says so), exec children start now.
pub fn open(cfg: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
    let uri: SourceUri = cfg.uri.parse()?;
    cfg.validate()?;
    match uri {
        SourceUri::Dir { path } => Ok(Box::new(dir::ReplaySource::open_dir(
            &path,
            cfg.replay_fps,
            cfg.replay_loop,
        )?)),
        SourceUri::File { path } => Ok(Box::new(dir::ReplaySource::open_file(
            &path,
            cfg.replay_fps,
            cfg.replay_loop,
        )?)),
        SourceUri::Exec { command } => {
            Ok(Box::new(exec::ExecSource::spawn(&command, cfg.backoff())?))
        }
        SourceUri::Camera { index } => open_camera(index, &uri, cfg),
        SourceUri::V4l2 { ref path } => {
            let real = path.canonicalize().map_err(|e| SourceError::Camera {
                device: uri.to_string(),
                reason: format!("cannot resolve the device node: {e}"),
            })?;
            let index = v4l2_index(&real).ok_or_else(|| SourceError::Camera {
                device: uri.to_string(),
                reason: format!("{} is not a /dev/videoN node", real.display()),
            })?;
            open_camera(index, &uri, cfg)
        }
    }
}

#[cfg(feature = "camera")]
fn open_camera(
    index: u32,
    uri: &SourceUri,
    cfg: &SourceConfig,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let device = nokhwa_device::NokhwaDevice::new(index, uri.to_string());
    Ok(Box::new(camera::CameraSource::open(
        device,
        cfg.request(),
        cfg.backoff(),
    )?))
}

#[cfg(not(feature = "camera"))]
fn open_camera(
    _index: u32,
    uri: &SourceUri,
    _cfg: &SourceConfig,
) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::CameraDisabled {
        uri: uri.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SourceUri, String> {
        s.parse::<SourceUri>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(parse("camera:0"), Ok(SourceUri::Camera { index: 0 }));
        assert_eq!(parse("camera:12"), Ok(SourceUri::Camera { index: 12 }));
        assert_eq!(
            parse("v4l2:///dev/video2"),
            Ok(SourceUri::V4l2 {
                path: "/dev/video2".into()
            })
        );
        assert_eq!(
            parse("exec:ffmpeg -i x -f mjpeg -"),
            Ok(SourceUri::Exec {
                command: "ffmpeg -i x -f mjpeg -".into()
            })
        );
        assert_eq!(
            parse("dir:imgs"),
            Ok(SourceUri::Dir {
                path: "imgs".into()
            })
        );
        assert_eq!(
            parse("dir:///data/imgs"),
            Ok(SourceUri::Dir {
                path: "/data/imgs".into()
            })
        );
        assert_eq!(
            parse("file:/a/b.jpg"),
            Ok(SourceUri::File {
                path: "/a/b.jpg".into()
            })
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "camera:3",
            "v4l2:///dev/video0",
            "exec:cat x",
            "dir:/a",
            "file:b.png",
        ] {
            let uri = parse(s).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(uri.to_string(), s);
        }
    }

    #[test]
    fn bad_uris_name_the_uri_and_the_problem() {
        for (uri, needle) in [
            ("webcam", "no scheme"),
            ("rtsp://cam/1", "unknown scheme \"rtsp\""),
            ("camera:front", "not a number"),
            ("camera:", "not a number"),
            ("v4l2:video0", "absolute"),
            ("exec:  ", "empty command"),
            ("dir:", "empty directory path"),
            ("file://", "empty file path"),
        ] {
            let msg = parse(uri).err().unwrap_or_default();
            assert!(msg.contains(&format!("{uri:?}")), "{uri}: {msg}");
            assert!(msg.contains(needle), "{uri}: {msg}");
        }
    }

    #[test]
    fn v4l2_index_from_device_node() {
        assert_eq!(v4l2_index(Path::new("/dev/video0")), Some(0));
        assert_eq!(v4l2_index(Path::new("/dev/video17")), Some(17));
        assert_eq!(v4l2_index(Path::new("/dev/media0")), None);
        assert_eq!(v4l2_index(Path::new("/dev/videoX")), None);
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: SourceConfig = toml::from_str("uri = \"dir:x\"").unwrap_or_default();
        assert_eq!(cfg.uri, "dir:x");
        assert_eq!((cfg.width, cfg.height, cfg.fps), (640, 480, 15.0));
        assert_eq!(cfg.format, FormatPreference::Auto);
        assert_eq!((cfg.replay_fps, cfg.replay_loop), (5.0, true));
        assert_eq!(cfg.restart_backoff_max_s, 30.0);

        let err = toml::from_str::<SourceConfig>("uri = \"dir:x\"\nfsp = 3").err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("fsp"), "{msg}");

        let cfg: Result<SourceConfig, _> = toml::from_str("format = \"yuyv\"");
        assert_eq!(cfg.map(|c| c.format).ok(), Some(FormatPreference::Yuyv));
    }

    #[test]
    fn validate_names_the_key() {
        let bad = [
            SourceConfig {
                fps: 0.0,
                ..SourceConfig::default()
            },
            SourceConfig {
                width: 0,
                ..SourceConfig::default()
            },
            SourceConfig {
                replay_fps: -1.0,
                ..SourceConfig::default()
            },
            SourceConfig {
                restart_backoff_max_s: f32::NAN,
                ..SourceConfig::default()
            },
        ];
        let keys = ["source.fps", "width", "replay_fps", "restart_backoff_max_s"];
        for (cfg, key) in bad.iter().zip(keys) {
            let msg = cfg
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(key), "{msg}");
        }
        assert!(SourceConfig::default().validate().is_ok());
    }

    #[test]
    fn stamper_ids_increase_and_count_frames() {
        let probe = HealthProbe::default();
        probe.set_state(HealthState::Reconnecting {
            attempt: 2,
            last_error: "x".into(),
        });
        let mut s = FrameStamper::default();
        let a = s.stamp(FrameData::Encoded(vec![1]), &probe);
        let b = s.stamp(FrameData::Encoded(vec![2]), &probe);
        assert_eq!((a.id, b.id), (0, 1));
        let h = probe.get();
        assert_eq!(h.frames, 2);
        assert_eq!(h.state, HealthState::Ok);
    }
}
