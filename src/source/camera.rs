//! Camera sources: the reconnect logic around any `CameraDevice`. The device (nokhwa V4L2 in
//! production, a fake in tests) only opens, lists modes, starts, delivers frames and closes; this
//! file decides the mode (`negotiate`), reopens an unplugged camera with backoff, keeps frame ids
//! increasing across reopens and reports health. Keeping the policy here means it is tested
//! without V4L2, and the nokhwa layer stays small.

use super::negotiate::{negotiate, Choice, NegotiationError, OfferedFormat, Request};
use super::{
    Backoff, Frame, FrameData, FrameSource, FrameStamper, HealthProbe, HealthState, Sleeper,
    SourceError,
};
use crate::vision::preprocess::PixelFormat;
use std::time::{Duration, Instant};

/// A session that delivered frames for at least this long resets the backoff when it fails.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Bad frames in a row before the camera is considered broken and reopened.
pub const MAX_BAD_FRAMES_IN_A_ROW: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    /// The device is missing, busy or stopped streaming: reopen it.
    #[error("{0}")]
    Device(String),
    /// One frame was unusable (short YUYV buffer, empty MJPEG): skip it.
    #[error("bad frame: {0}")]
    BadFrame(String),
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
}

/// The I/O a camera source needs. Implementations must be cheap to retry: `open` after `close`
/// (or after a failed `open`) starts from scratch.
pub trait CameraDevice: Send {
    /// "camera:0", for logs.
    fn label(&self) -> String;
    /// Opens the device and lists the modes it can stream.
    fn open(&mut self) -> Result<Vec<OfferedFormat>, CameraError>;
    /// Switches to `mode` and starts streaming.
    fn start(&mut self, mode: &OfferedFormat) -> Result<(), CameraError>;
    /// Blocks for the next frame.
    fn frame(&mut self) -> Result<FrameData, CameraError>;
    /// Releases the device; must not fail (an unplugged camera is already gone).
    fn close(&mut self);
}

/// Wraps one buffer from a device streaming `mode`: MJPEG stays encoded, YUYV and RGB become
/// raw frames. Short buffers are bad frames (skipped); V4L2 padding past the image is cut off.
pub fn frame_from_buffer(mode: &OfferedFormat, buf: &[u8]) -> Result<FrameData, CameraError> {
    let Some(format) = mode.format.pixel_format() else {
        return Err(CameraError::Device(format!(
            "{} frames cannot be decoded",
            mode.format
        )));
    };
    let bytes_per_pixel: u64 = match format {
        PixelFormat::Mjpeg => {
            if buf.len() < 4 || buf[..2] != [0xFF, 0xD8] {
                return Err(CameraError::BadFrame(format!(
                    "MJPEG buffer of {} bytes does not start with a JPEG SOI marker",
                    buf.len()
                )));
            }
            return Ok(FrameData::Encoded(buf.to_vec()));
        }
        PixelFormat::Yuyv => 2,
        PixelFormat::Rgb24 => 3,
    };
    let expected = u64::from(mode.width) * u64::from(mode.height) * bytes_per_pixel;
    let expected = usize::try_from(expected)
        .map_err(|_| CameraError::Device(format!("{}x{} is too large", mode.width, mode.height)))?;
    if buf.len() < expected {
        return Err(CameraError::BadFrame(format!(
            "{} buffer of {} bytes, expected {expected} for {}x{}",
            mode.format,
            buf.len(),
            mode.width,
            mode.height
        )));
    }
    Ok(FrameData::Raw {
        format,
        width: mode.width,
        height: mode.height,
        bytes: buf[..expected].to_vec(),
    })
}

/// A camera with reconnects, over any device.
pub struct CameraSource<D: CameraDevice> {
    device: D,
    want: Request,
    /// The mode of the current session; `None` while closed.
    choice: Option<Choice>,
    last_choice: Option<Choice>,
    session_start: Instant,
    session_frames: u64,
    bad_in_a_row: u32,
    backoff: Backoff,
    stable_after: Duration,
    stamper: FrameStamper,
    probe: HealthProbe,
    sleeper: Sleeper,
}

impl<D: CameraDevice> CameraSource<D> {
    /// Opens the camera now: a camera missing at start-up is an error the operator should see,
    /// while one lost later is waited for.
    pub fn open(device: D, want: Request, backoff: Backoff) -> Result<Self, SourceError> {
        Self::open_with(device, want, backoff, super::real_sleeper())
    }

    /// `open` with an injected sleeper (tests record delays instead of sleeping).
    pub fn open_with(
        device: D,
        want: Request,
        backoff: Backoff,
        sleeper: Sleeper,
    ) -> Result<Self, SourceError> {
        let mut source = Self {
            device,
            want,
            choice: None,
            last_choice: None,
            session_start: Instant::now(),
            session_frames: 0,
            bad_in_a_row: 0,
            backoff,
            stable_after: STABLE_AFTER,
            stamper: FrameStamper::default(),
            probe: HealthProbe::default(),
            sleeper,
        };
        source.connect().map_err(|e| SourceError::Camera {
            device: source.device.label(),
            reason: e.to_string(),
        })?;
        Ok(source)
    }

    /// Overrides how long a session must last before a failure resets the backoff.
    pub fn with_stable_after(mut self, stable_after: Duration) -> Self {
        self.stable_after = stable_after;
        self
    }

    /// The mode of the current (or last) session.
    pub fn choice(&self) -> Option<&Choice> {
        self.choice.as_ref().or(self.last_choice.as_ref())
    }

    fn connect(&mut self) -> Result<(), CameraError> {
        let result = self.try_connect();
        if result.is_err() {
            self.device.close();
        }
        result
    }

    fn try_connect(&mut self) -> Result<(), CameraError> {
        let offered = self.device.open()?;
        let choice = negotiate(&offered, &self.want)?;
        self.device.start(&choice.chosen)?;
        log::info!("{}: {choice}", self.device.label());
        self.choice = Some(choice);
        self.session_start = Instant::now();
        self.session_frames = 0;
        self.bad_in_a_row = 0;
        Ok(())
    }

    /// The session broke: close, remember why, and wait before the next open.
    fn fail(&mut self, error: &CameraError) {
        if self.choice.is_some() {
            // A session that streamed fine for a while starts the backoff over.
            if self.session_frames > 0 && self.session_start.elapsed() >= self.stable_after {
                self.backoff.reset();
            }
            self.last_choice = self.choice.take();
            // A failed `connect` already closed the device; only a live session needs it.
            self.device.close();
        }
        let delay = self.backoff.next_delay();
        log::warn!(
            "{}: {error}; reopening in {:.1}s",
            self.device.label(),
            delay.as_secs_f64()
        );
        self.probe.set_state(HealthState::Reconnecting {
            attempt: self.backoff.attempt(),
            last_error: error.to_string(),
        });
        (self.sleeper)(delay);
    }
}

impl<D: CameraDevice> FrameSource for CameraSource<D> {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.choice.is_none() {
                match self.connect() {
                    Ok(()) => self.probe.update(|h| h.reopens += 1),
                    Err(e) => {
                        self.fail(&e);
                        continue;
                    }
                }
            }
            match self.device.frame() {
                Ok(data) => {
                    self.session_frames += 1;
                    self.bad_in_a_row = 0;
                    return Ok(Some(self.stamper.stamp(data, &self.probe)));
                }
                Err(CameraError::BadFrame(why)) if self.bad_in_a_row < MAX_BAD_FRAMES_IN_A_ROW => {
                    self.bad_in_a_row += 1;
                    log::debug!("{}: skipping a bad frame: {why}", self.device.label());
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    fn describe(&self) -> String {
        let label = self.device.label();
        match (&self.choice, &self.last_choice) {
            (Some(c), _) => format!(
                "{label} {} ({})",
                c.chosen,
                if c.exact {
                    "as requested"
                } else {
                    "negotiated"
                }
            ),
            (None, Some(c)) => format!("{label} {} (reconnecting)", c.chosen),
            (None, None) => format!("{label} (closed)"),
        }
    }

    fn health_probe(&self) -> HealthProbe {
        self.probe.clone()
    }
}

impl<D: CameraDevice> Drop for CameraSource<D> {
    fn drop(&mut self) {
        // Without a session the device was already closed when that session (or open) failed.
        if self.choice.is_some() {
            self.device.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::negotiate::CaptureFormat;
    use super::super::{FormatPreference, SourceHealth};
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// What the fake does on each call, scripted.
    #[derive(Debug, Clone)]
    enum Step {
        /// `open` succeeds, then this many frames are delivered.
        Session(u32),
        /// `open` fails (device unplugged).
        Missing,
        /// `open` succeeds, then one bad frame, then frames.
        BadFrameThen(u32),
    }

    #[derive(Debug, Default)]
    struct Calls {
        opens: u32,
        starts: Vec<OfferedFormat>,
        closes: u32,
    }

    struct FakeCamera {
        offered: Vec<OfferedFormat>,
        script: VecDeque<Step>,
        frames_left: u32,
        bad_next: bool,
        open: bool,
        counter: u8,
        calls: Arc<Mutex<Calls>>,
    }

    impl FakeCamera {
        fn new(script: &[Step]) -> (Self, Arc<Mutex<Calls>>) {
            let calls = Arc::new(Mutex::new(Calls::default()));
            let fake = Self {
                offered: vec![
                    OfferedFormat {
                        format: CaptureFormat::Yuyv,
                        width: 640,
                        height: 480,
                        fps: 30,
                    },
                    OfferedFormat {
                        format: CaptureFormat::Mjpeg,
                        width: 640,
                        height: 480,
                        fps: 30,
                    },
                ],
                script: script.iter().cloned().collect(),
                frames_left: 0,
                bad_next: false,
                open: false,
                counter: 0,
                calls: Arc::clone(&calls),
            };
            (fake, calls)
        }
    }

    impl CameraDevice for FakeCamera {
        fn label(&self) -> String {
            "fake:0".into()
        }

        fn open(&mut self) -> Result<Vec<OfferedFormat>, CameraError> {
            if let Ok(mut c) = self.calls.lock() {
                c.opens += 1;
            }
            match self.script.pop_front() {
                Some(Step::Session(n)) => self.frames_left = n,
                Some(Step::BadFrameThen(n)) => {
                    self.frames_left = n;
                    self.bad_next = true;
                }
                Some(Step::Missing) | None => {
                    return Err(CameraError::Device("No such device (os error 19)".into()))
                }
            }
            self.open = true;
            Ok(self.offered.clone())
        }

        fn start(&mut self, mode: &OfferedFormat) -> Result<(), CameraError> {
            if let Ok(mut c) = self.calls.lock() {
                c.starts.push(*mode);
            }
            Ok(())
        }

        fn frame(&mut self) -> Result<FrameData, CameraError> {
            if !self.open {
                return Err(CameraError::Device("not open".into()));
            }
            if self.bad_next {
                self.bad_next = false;
                return Err(CameraError::BadFrame("short buffer".into()));
            }
            if self.frames_left == 0 {
                return Err(CameraError::Device("VIDIOC_DQBUF: No such device".into()));
            }
            self.frames_left -= 1;
            self.counter = self.counter.wrapping_add(1);
            Ok(FrameData::Encoded(vec![
                0xFF,
                0xD8,
                self.counter,
                0xFF,
                0xD9,
            ]))
        }

        fn close(&mut self) {
            self.open = false;
            if let Ok(mut c) = self.calls.lock() {
                c.closes += 1;
            }
        }
    }

    fn want() -> Request {
        Request {
            width: 640,
            height: 480,
            fps: 30.0,
            format: FormatPreference::Auto,
        }
    }

    fn no_jitter() -> Backoff {
        Backoff::with_seed(
            Duration::from_millis(100),
            Duration::from_millis(400),
            0.0,
            1,
        )
    }

    type SleepLog = Arc<Mutex<Vec<(Duration, SourceHealth)>>>;

    /// A sleeper that records the delay and the health visible through a probe at that moment.
    fn recording_sleeper(probe_slot: Arc<Mutex<Option<HealthProbe>>>, log: SleepLog) -> Sleeper {
        Box::new(move |d| {
            let health = probe_slot
                .lock()
                .ok()
                .and_then(|p| p.as_ref().map(HealthProbe::get))
                .unwrap_or_default();
            if let Ok(mut l) = log.lock() {
                l.push((d, health));
            }
        })
    }

    #[test]
    fn unplug_reopens_with_backoff_and_frames_resume() {
        let (fake, calls) = FakeCamera::new(&[
            Step::Session(2),
            Step::Missing,
            Step::Missing,
            Step::Missing,
            Step::Session(2),
        ]);
        let slot = Arc::new(Mutex::new(None));
        let log: SleepLog = Arc::default();
        let sleeper = recording_sleeper(Arc::clone(&slot), Arc::clone(&log));
        let mut cam = CameraSource::open_with(fake, want(), no_jitter(), sleeper)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Ok(mut s) = slot.lock() {
            *s = Some(cam.health_probe());
        }
        assert!(
            cam.describe()
                .contains("640x480 MJPEG @30fps (as requested)"),
            "{}",
            cam.describe()
        );

        let ids: Vec<u64> = (0..4)
            .map(|_| match cam.next_frame() {
                Ok(Some(f)) => f.id,
                other => panic!("expected a frame, got {other:?}"),
            })
            .collect();
        assert_eq!(ids, [0, 1, 2, 3], "ids keep increasing across the reopen");

        let log = log.lock().map(|l| l.clone()).unwrap_or_default();
        let delays: Vec<u64> = log.iter().map(|(d, _)| d.as_millis() as u64).collect();
        // Unplug, then three failed opens: 100, 200, 400, capped at 400.
        assert_eq!(delays, [100, 200, 400, 400]);
        for (i, (_, h)) in log.iter().enumerate() {
            match &h.state {
                HealthState::Reconnecting {
                    attempt,
                    last_error,
                } => {
                    assert_eq!(*attempt, i as u32 + 1);
                    let expect = if i == 0 { "DQBUF" } else { "No such device" };
                    assert!(last_error.contains(expect), "{last_error}");
                }
                other => panic!("sleep {i}: health {other:?}, expected Reconnecting"),
            }
        }
        let h = cam.health();
        assert_eq!(h.state, HealthState::Ok);
        assert_eq!(h.reopens, 1);
        assert_eq!(h.frames, 4);
        let calls = calls
            .lock()
            .map(|c| (c.opens, c.starts.len(), c.closes))
            .unwrap_or_default();
        assert_eq!(calls, (5, 2, 4), "(opens, starts, closes)");
    }

    #[test]
    fn backoff_resets_after_a_stable_session() {
        let (fake, _) = FakeCamera::new(&[
            Step::Session(1),
            Step::Missing,
            Step::Session(1),
            Step::Session(1),
        ]);
        let log: SleepLog = Arc::default();
        let sleeper = recording_sleeper(Arc::default(), Arc::clone(&log));
        let mut cam = CameraSource::open_with(fake, want(), no_jitter(), sleeper)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_stable_after(Duration::ZERO);
        for _ in 0..3 {
            assert!(matches!(cam.next_frame(), Ok(Some(_))));
        }
        let delays: Vec<u64> = log
            .lock()
            .map(|l| l.iter().map(|(d, _)| d.as_millis() as u64).collect())
            .unwrap_or_default();
        // Session fails (reset: 100), open fails (200), session fails (reset again: 100).
        assert_eq!(delays, [100, 200, 100]);
    }

    #[test]
    fn a_bad_frame_is_skipped_without_reopening() {
        let (fake, calls) = FakeCamera::new(&[Step::BadFrameThen(2)]);
        let mut cam = CameraSource::open_with(fake, want(), no_jitter(), Box::new(|_| {}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cam.next_frame(), Ok(Some(f)) if f.id == 0));
        assert_eq!(calls.lock().map(|c| c.opens).unwrap_or_default(), 1);
        assert_eq!(cam.health().reopens, 0);
    }

    #[test]
    fn missing_camera_at_start_is_an_error_naming_it() {
        let (fake, calls) = FakeCamera::new(&[Step::Missing]);
        let err = CameraSource::open_with(fake, want(), no_jitter(), Box::new(|_| {})).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("fake:0") && msg.contains("No such device"),
            "{msg}"
        );
        assert_eq!(calls.lock().map(|c| c.closes).unwrap_or_default(), 1);
    }

    #[test]
    fn undecodable_camera_is_an_error_at_start() {
        let (mut fake, _) = FakeCamera::new(&[Step::Session(1)]);
        for o in &mut fake.offered {
            o.format = CaptureFormat::Nv12;
        }
        let err = CameraSource::open_with(fake, want(), no_jitter(), Box::new(|_| {})).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("NV12"), "{msg}");
    }

    #[test]
    fn buffers_become_frame_data() {
        let mode = |format| OfferedFormat {
            format,
            width: 4,
            height: 2,
            fps: 30,
        };
        let jpeg = [0xFF, 0xD8, 0x00, 0xFF, 0xD9];
        assert_eq!(
            frame_from_buffer(&mode(CaptureFormat::Mjpeg), &jpeg),
            Ok(FrameData::Encoded(jpeg.to_vec()))
        );
        assert!(matches!(
            frame_from_buffer(&mode(CaptureFormat::Mjpeg), &[0, 0, 0, 0]),
            Err(CameraError::BadFrame(_))
        ));
        // YUYV: 2 bytes a pixel; padding beyond 16 bytes is dropped.
        let yuyv: Vec<u8> = (0..20).collect();
        assert_eq!(
            frame_from_buffer(&mode(CaptureFormat::Yuyv), &yuyv),
            Ok(FrameData::Raw {
                format: PixelFormat::Yuyv,
                width: 4,
                height: 2,
                bytes: yuyv[..16].to_vec()
            })
        );
        assert!(matches!(
            frame_from_buffer(&mode(CaptureFormat::Rgb24), &yuyv),
            Err(CameraError::BadFrame(m)) if m.contains("expected 24")
        ));
        assert!(matches!(
            frame_from_buffer(&mode(CaptureFormat::Nv12), &yuyv),
            Err(CameraError::Device(_))
        ));
    }

    #[test]
    fn describe_says_when_negotiated() {
        let (fake, calls) = FakeCamera::new(&[Step::Session(1)]);
        let mut w = want();
        w.width = 1280;
        let cam = CameraSource::open_with(fake, w, no_jitter(), Box::new(|_| {}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cam.describe(), "fake:0 640x480 MJPEG @30fps (negotiated)");
        let started = calls.lock().map(|c| c.starts.clone()).unwrap_or_default();
        assert_eq!(
            started.first().map(|m| m.format),
            Some(CaptureFormat::Mjpeg)
        );
        drop(cam);
        assert_eq!(calls.lock().map(|c| c.closes).unwrap_or_default(), 1);
    }
}
