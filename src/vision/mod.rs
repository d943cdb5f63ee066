//! Everything between image bytes and an embedding: the model manifest (what the ONNX file
//! expects), fetching a model, decoding and preprocessing images, and the tract backbone.

pub mod backbone; // tract or onnxruntime: load + optimize once, run many times -> embedding + logits
pub mod decode; // bytes -> RgbImage: JPEG/PNG/BMP files, raw RGB24/YUYV/MJPEG frames
pub mod embedder; // decode + preprocess + backbone with reused buffers and per-stage timings
pub mod engine; // engine/device/precision choice (tract or onnxruntime) and its valid combinations
pub mod fetch; // download a model (URL + sha256, optional tar.gz extraction)
pub mod labels; // class-name files and label offsets
pub mod manifest; // the TOML model description in models/
pub mod preprocess; // resize (SIMD) + normalize into the model's layout, buffers reused
pub mod spec; // InputSpec / Layout / Fingerprint: the small types shared by the modules above
