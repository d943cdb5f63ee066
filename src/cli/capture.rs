//! `glimpse capture`: read frames from any source and classify them, one JSON line per frame,
//! without MQTT. For trying a camera by hand, and for the VM camera test (docs/camera-vm.md):
//! it logs the negotiated format, reports a camera lost and back, and prints a summary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::common::{ConfigError, ModelArgs};
use crate::daemon::pipeline::decode_frame;
use crate::source::{FormatPreference, HealthState, SourceConfig};
use crate::vision::decode::DecodeLimits;
use crate::vision::embedder::Embedder;
use crate::vision::labels::{softmax, top_k};

#[derive(Args, Debug)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Source URI: camera:N, v4l2:///dev/videoN, exec:COMMAND, dir:PATH, file:PATH.
    #[arg(long, default_value = "camera:0")]
    pub source: String,
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    #[arg(long, default_value_t = 480)]
    pub height: u32,
    #[arg(long, default_value_t = 15.0)]
    pub fps: f32,
    /// auto (MJPEG preferred, YUYV fallback), mjpeg, yuyv or rgb.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Stop after this many frames.
    #[arg(long, default_value_t = 10)]
    pub frames: u64,
    /// Keep running through a camera loss until this many frames arrived after it came back
    /// (instead of stopping after --frames).
    #[arg(long)]
    pub until_frames_after_reconnect: Option<u64>,
    /// Top-k ImageNet classes per frame.
    #[arg(short = 'k', long, default_value_t = 3)]
    pub top_k: usize,
    /// JSON lines (the only output format; kept for symmetry with classify).
    #[arg(long)]
    pub json: bool,
}

fn parse_format(text: &str) -> Result<FormatPreference, ConfigError> {
    serde_json::from_value(json!(text.to_ascii_lowercase())).map_err(|_| {
        ConfigError(format!(
            "--format {text:?}: expected auto, mjpeg, yuyv or rgb"
        ))
    })
}

pub fn run(args: &CaptureArgs) -> anyhow::Result<()> {
    let config = SourceConfig {
        uri: args.source.clone(),
        width: args.width,
        height: args.height,
        fps: args.fps,
        format: parse_format(&args.format)?,
        replay_loop: false,
        ..SourceConfig::default()
    };
    config.validate().map_err(|e| ConfigError(e.to_string()))?;
    let backbone = args.model.load_backbone()?;
    let labels = backbone
        .labels()
        .ok_or_else(|| ConfigError("the model manifest has no labels file".into()))?
        .clone();
    let mut source = crate::source::open(&config)?;
    let negotiated = source.describe();
    eprintln!("negotiated: {negotiated}");

    // The source blocks inside next_frame while it reconnects, so a watcher thread reports the
    // loss as it happens.
    let lost = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (probe, lost, done) = (source.health_probe(), lost.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let HealthState::Reconnecting {
                    attempt,
                    last_error,
                } = probe.get().state
                {
                    if !lost.swap(true, Ordering::Relaxed) {
                        println!(
                            "{}",
                            json!({"event": "camera_lost", "attempt": attempt, "error": last_error})
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let mut embedder = Embedder::new(backbone, args.model.resize_mode(), DecodeLimits::default());
    let limits = DecodeLimits::default();
    let started = Instant::now();
    let mut frames = 0u64;
    let mut after_reconnect: Option<u64> = None;
    let mut failed = 0u64;
    loop {
        let finished = match args.until_frames_after_reconnect {
            Some(n) => after_reconnect.is_some_and(|count| count >= n),
            None => frames >= args.frames,
        };
        if finished {
            break;
        }
        let Some(frame) = source.next_frame()? else {
            break;
        };
        if lost.swap(false, Ordering::Relaxed) {
            println!("{}", json!({"event": "camera_back", "frame_id": frame.id}));
            after_reconnect = Some(0);
        }
        let (width, height, format) = match &frame.data {
            crate::source::FrameData::Encoded(_) => (0, 0, "encoded".to_string()),
            crate::source::FrameData::Raw {
                format,
                width,
                height,
                ..
            } => (*width, *height, format!("{format:?}")),
        };
        let image = match decode_frame(&frame.data, &limits) {
            Ok(image) => image,
            Err(err) => {
                failed += 1;
                println!(
                    "{}",
                    json!({"frame_id": frame.id, "error": err.to_string()})
                );
                continue;
            }
        };
        let (output, _) = embedder.embed_image(&image)?;
        let top: Vec<_> = output
            .logits
            .as_deref()
            .map(|logits| top_k(&softmax(logits), args.top_k))
            .unwrap_or_default()
            .into_iter()
            .map(|(index, score)| {
                json!({"index": index, "label": labels.name(index).unwrap_or("?"), "score": score})
            })
            .collect();
        let latency = frame.received.elapsed();
        println!(
            "{}",
            json!({
                "frame_id": frame.id,
                "width": if width > 0 { width } else { image.width() },
                "height": if height > 0 { height } else { image.height() },
                "format": format,
                "top_k": top,
                "latency_ms": latency.as_secs_f64() * 1e3,
            })
        );
        frames += 1;
        if let Some(count) = after_reconnect.as_mut() {
            *count += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{}",
        json!({"frames": frames, "failed": failed, "fps": frames as f64 / elapsed, "negotiated": negotiated})
    );
    Ok(())
}
