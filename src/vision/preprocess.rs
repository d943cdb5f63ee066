//! (stub) filled in by the vision work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PixelFormat {
    Rgb24,
    Yuyv,
    Mjpeg,
}
