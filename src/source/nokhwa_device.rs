//! The real camera: nokhwa 0.10's V4L2 backend behind `CameraDevice`. Kept small on purpose;
//! mode choice, reconnects and health live in `camera.rs` and are tested there with a fake.
//!
//! nokhwa's `Camera` is not `Send` (it boxes a backend trait object without `Send`), while a
//! `FrameSource` must be, so the camera lives on its own thread and this handle talks to it with
//! request/reply messages. One thread per open session: closing drops the request channel, the
//! thread drops the camera (stopping the stream) and exits.
//!
//! nokhwa facts this relies on (read in its source): cameras open by index; its V4L2 backend
//! knows only YUYV, MJPG, GRAY, RGB3, BGR3 and NV12; `Camera::new` enumerates every mode and
//! applies one chosen by the `RequestedFormat`; `frame_raw` returns the driver's buffer as is.

use super::camera::{frame_from_buffer, CameraDevice, CameraError};
use super::negotiate::{CaptureFormat, OfferedFormat};
use super::FrameData;
use nokhwa::utils::{CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
use nokhwa::Camera;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Every format nokhwa can open, so `Camera::new` succeeds on any device it can talk to and our
/// own negotiation (with its clear error) decides what is usable.
const ALL_FORMATS: [FrameFormat; 6] = [
    FrameFormat::MJPEG,
    FrameFormat::YUYV,
    FrameFormat::RAWRGB,
    FrameFormat::RAWBGR,
    FrameFormat::GRAY,
    FrameFormat::NV12,
];

/// How long to wait for a frame (or for open/start) before declaring the camera stuck.
/// A V4L2 dequeue can block forever on a wedged device; this turns that into a reconnect.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

enum Request {
    Start(OfferedFormat),
    Frame,
}

enum Reply {
    Offered(Result<Vec<OfferedFormat>, String>),
    Started(Result<(), String>),
    Frame(Result<FrameData, CameraError>),
}

struct Worker {
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    thread: JoinHandle<()>,
    /// A request timed out: the thread may be stuck inside the driver, never join it.
    stuck: bool,
}

/// A V4L2 camera by index (`/dev/videoN` is index N).
pub struct NokhwaDevice {
    index: u32,
    label: String,
    worker: Option<Worker>,
}

impl NokhwaDevice {
    pub fn new(index: u32, label: String) -> Self {
        Self {
            index,
            label,
            worker: None,
        }
    }

    /// Sends `request` (if any) and waits for the worker's reply.
    fn call(&mut self, request: Option<Request>) -> Result<Reply, CameraError> {
        let Some(worker) = self.worker.as_mut() else {
            return Err(CameraError::Device("camera is not open".into()));
        };
        if let Some(request) = request {
            worker
                .requests
                .send(request)
                .map_err(|_| CameraError::Device("camera thread has stopped".into()))?;
        }
        match worker.replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                worker.stuck = true;
                Err(CameraError::Device(format!(
                    "no answer from the camera for {}s",
                    REPLY_TIMEOUT.as_secs()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(CameraError::Device("camera thread has stopped".into()))
            }
        }
    }
}

fn unexpected() -> CameraError {
    CameraError::Device("camera thread answered out of order".into())
}

impl CameraDevice for NokhwaDevice {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn open(&mut self) -> Result<Vec<OfferedFormat>, CameraError> {
        self.close();
        let (req_tx, req_rx) = mpsc::channel();
        let (rep_tx, rep_rx) = mpsc::channel();
        let index = self.index;
        let thread = std::thread::Builder::new()
            .name(format!("camera-{index}"))
            .spawn(move || serve(index, &req_rx, &rep_tx))
            .map_err(|e| CameraError::Device(format!("cannot start the camera thread: {e}")))?;
        self.worker = Some(Worker {
            requests: req_tx,
            replies: rep_rx,
            thread,
            stuck: false,
        });
        match self.call(None)? {
            Reply::Offered(r) => r.map_err(CameraError::Device),
            _ => Err(unexpected()),
        }
    }

    fn start(&mut self, mode: &OfferedFormat) -> Result<(), CameraError> {
        match self.call(Some(Request::Start(*mode)))? {
            Reply::Started(r) => r.map_err(CameraError::Device),
            _ => Err(unexpected()),
        }
    }

    fn frame(&mut self) -> Result<FrameData, CameraError> {
        match self.call(Some(Request::Frame))? {
            Reply::Frame(r) => r,
            _ => Err(unexpected()),
        }
    }

    fn close(&mut self) {
        if let Some(worker) = self.worker.take() {
            drop(worker.requests);
            if worker.stuck {
                log::warn!("{}: leaving a stuck camera thread behind", self.label);
            } else if worker.thread.join().is_err() {
                log::warn!("{}: the camera thread panicked while closing", self.label);
            }
        }
    }
}

impl Drop for NokhwaDevice {
    fn drop(&mut self) {
        self.close();
    }
}

/// The camera thread: open, report modes, then serve start/frame requests until the handle
/// hangs up. Dropping `camera` at the end stops the stream and closes the device.
fn serve(index: u32, requests: &Receiver<Request>, replies: &Sender<Reply>) {
    let wanted = RequestedFormat::with_formats(RequestedFormatType::None, &ALL_FORMATS);
    let mut camera = match Camera::new(CameraIndex::Index(index), wanted) {
        Ok(camera) => camera,
        Err(e) => {
            let _ = replies.send(Reply::Offered(Err(format!("cannot open: {e}"))));
            return;
        }
    };
    let offered = camera
        .compatible_camera_formats()
        .map(|modes| modes.iter().map(offered_format).collect())
        .map_err(|e| format!("cannot list modes: {e}"));
    if replies.send(Reply::Offered(offered)).is_err() {
        return;
    }
    let mut mode: Option<OfferedFormat> = None;
    while let Ok(request) = requests.recv() {
        let reply = match request {
            Request::Start(wanted) => {
                let r = start(&mut camera, &wanted);
                if r.is_ok() {
                    mode = Some(wanted);
                }
                Reply::Started(r)
            }
            Request::Frame => Reply::Frame(match &mode {
                None => Err(CameraError::Device("stream not started".into())),
                Some(m) => match camera.frame_raw() {
                    Ok(buf) => frame_from_buffer(m, &buf),
                    Err(e) => Err(CameraError::Device(format!("reading a frame: {e}"))),
                },
            }),
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// Applies `mode` and starts streaming. Drivers may round the frame interval; a mode that
/// matches in format and size is accepted with the driver's fps.
fn start(camera: &mut Camera, mode: &OfferedFormat) -> Result<(), String> {
    let format = frame_format(mode.format);
    let wanted = CameraFormat::new_from(mode.width, mode.height, format, mode.fps);
    let formats = [format];
    let request = RequestedFormat::with_formats(RequestedFormatType::Exact(wanted), &formats);
    if let Err(e) = camera.set_camera_requset(request) {
        let actual = camera
            .refresh_camera_format()
            .map_err(|_| format!("cannot set {mode}: {e}"))?;
        if actual.format() != format
            || actual.width() != mode.width
            || actual.height() != mode.height
        {
            return Err(format!("cannot set {mode}: {e} (device is at {actual})"));
        }
        log::warn!(
            "camera {mode}: the driver runs at {}fps instead",
            actual.frame_rate()
        );
    }
    camera
        .open_stream()
        .map_err(|e| format!("cannot start streaming {mode}: {e}"))
}

fn offered_format(f: &CameraFormat) -> OfferedFormat {
    OfferedFormat {
        format: capture_format(f.format()),
        width: f.width(),
        height: f.height(),
        fps: f.frame_rate(),
    }
}

fn capture_format(f: FrameFormat) -> CaptureFormat {
    match f {
        FrameFormat::MJPEG => CaptureFormat::Mjpeg,
        FrameFormat::YUYV => CaptureFormat::Yuyv,
        FrameFormat::RAWRGB => CaptureFormat::Rgb24,
        FrameFormat::RAWBGR => CaptureFormat::Bgr24,
        FrameFormat::GRAY => CaptureFormat::Gray,
        FrameFormat::NV12 => CaptureFormat::Nv12,
    }
}

fn frame_format(f: CaptureFormat) -> FrameFormat {
    match f {
        CaptureFormat::Mjpeg => FrameFormat::MJPEG,
        CaptureFormat::Yuyv => FrameFormat::YUYV,
        CaptureFormat::Rgb24 => FrameFormat::RAWRGB,
        CaptureFormat::Bgr24 => FrameFormat::RAWBGR,
        CaptureFormat::Gray => FrameFormat::GRAY,
        CaptureFormat::Nv12 => FrameFormat::NV12,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_map_both_ways() {
        for f in ALL_FORMATS {
            assert_eq!(frame_format(capture_format(f)), f);
        }
    }

    #[test]
    fn opening_a_missing_camera_fails_cleanly() {
        // These machines have no V4L2 devices: open must fail with a message, not hang or panic.
        let mut dev = NokhwaDevice::new(97, "camera:97".into());
        let err = dev.open().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("cannot open"), "{err}");
        dev.close();
    }
}
