//! Replays image files (`dir:` and `file:` sources) as frames: the way to run the whole pipeline
//! without a camera, in tests, demos and for re-checking a head on known images.
//!
//! A directory is listed once at open (jpg/jpeg/png/bmp, non-recursive, sorted by name so replay
//! order is reproducible); files are read on demand and handed out as `FrameData::Encoded`. A file
//! over the decoder's byte cap is skipped with a warning before any of it is read (a 200 MB file
//! dropped in the directory costs a `stat`, not 200 MB).

use super::{
    Frame, FrameData, FrameSource, FrameStamper, HealthProbe, HealthState, Sleeper, SourceError,
};
use crate::fsutil::read_capped;
use crate::vision::decode::DecodeLimits;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Extensions replayed (case-insensitive), the ones the pipeline's decoder understands.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// True when the file name has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The images directly inside `dir`, sorted by file name. Errors when the directory is missing,
/// unreadable or holds no image.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let replay = |reason: String| SourceError::Replay {
        path: dir.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| replay(format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| replay(format!("cannot list: {e}")))?;
        let path = entry.path();
        // `metadata` follows symlinks: a link to an image counts, a link to a dir does not.
        if is_image_name(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(replay(format!(
            "no images to replay (looked for *.{{{}}}, non-recursive)",
            IMAGE_EXTENSIONS.join(",")
        )));
    }
    files.sort();
    Ok(files)
}

/// When the next frame is due: `period` after the previous one, but never in the past (a slow
/// consumer must not cause a burst of catch-up frames). Returns (wait, next due).
pub fn pace(now: Instant, due: Option<Instant>, period: Duration) -> (Duration, Instant) {
    match due {
        Some(due) if due > now => (due - now, due + period),
        _ => (Duration::ZERO, now + period),
    }
}

/// Replays a fixed list of image files.
pub struct ReplaySource {
    label: String,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    period: Option<Duration>,
    due: Option<Instant>,
    stamper: FrameStamper,
    probe: HealthProbe,
    sleeper: Sleeper,
    /// Largest file read; the pipeline's decoder refuses anything larger anyway.
    max_file_bytes: usize,
}

impl ReplaySource {
    /// `dir:` — every image in `dir`.
    pub fn open_dir(dir: &Path, fps: f32, looping: bool) -> Result<Self, SourceError> {
        let files = list_images(dir)?;
        Ok(Self::new(
            format!("dir:{}", dir.display()),
            files,
            fps,
            looping,
        ))
    }

    /// `file:` — one image, replayed like a one-image directory.
    pub fn open_file(path: &Path, fps: f32, looping: bool) -> Result<Self, SourceError> {
        let replay = |reason: String| SourceError::Replay {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| replay(format!("cannot open: {e}")))?;
        if !meta.is_file() {
            return Err(replay("not a regular file".into()));
        }
        if !is_image_name(path) {
            return Err(replay(format!(
                "not an image file name (expected *.{{{}}})",
                IMAGE_EXTENSIONS.join(",")
            )));
        }
        Ok(Self::new(
            format!("file:{}", path.display()),
            vec![path.to_path_buf()],
            fps,
            looping,
        ))
    }

    fn new(label: String, files: Vec<PathBuf>, fps: f32, looping: bool) -> Self {
        let period = (fps.is_finite() && fps > 0.0).then(|| Duration::from_secs_f32(1.0 / fps));
        Self {
            label,
            files,
            next: 0,
            looping,
            period,
            due: None,
            stamper: FrameStamper::default(),
            probe: HealthProbe::default(),
            sleeper: super::real_sleeper(),
            max_file_bytes: DecodeLimits::default().max_bytes,
        }
    }

    /// Sets the largest file read (default: the frame decoder's `max_bytes`).
    pub fn with_max_file_bytes(mut self, max_bytes: usize) -> Self {
        self.max_file_bytes = max_bytes;
        self
    }

    /// The files in replay order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Reads the next file, skipping (with a warning) files that vanished since the listing or are
    /// over the byte cap.
    fn read_next(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        let mut failures = 0;
        loop {
            if self.next >= self.files.len() {
                if !self.looping {
                    return Ok(None);
                }
                self.next = 0;
            }
            let path = &self.files[self.next];
            self.next += 1;
            match read_capped(path, self.max_file_bytes) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(source) => {
                    failures += 1;
                    if failures >= self.files.len() {
                        return Err(SourceError::Read {
                            path: path.clone(),
                            source,
                        });
                    }
                    log::warn!("{}: skipping {}: {source}", self.label, path.display());
                }
            }
        }
    }
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let Some(bytes) = self.read_next()? else {
            self.probe.set_state(HealthState::Ended);
            return Ok(None);
        };
        if let Some(period) = self.period {
            let (wait, due) = pace(Instant::now(), self.due, period);
            if !wait.is_zero() {
                (self.sleeper)(wait);
            }
            self.due = Some(due);
        }
        Ok(Some(
            self.stamper.stamp(FrameData::Encoded(bytes), &self.probe),
        ))
    }

    fn describe(&self) -> String {
        let rate = match self.period {
            Some(p) => format!("{:.3}fps", 1.0 / p.as_secs_f64()),
            None => "unpaced".into(),
        };
        format!(
            "{} ({} image{}, {rate}, {})",
            self.label,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            if self.looping { "looping" } else { "once" }
        )
    }

    fn health_probe(&self) -> HealthProbe {
        self.probe.clone()
    }

    fn paced_by_consumer(&self) -> bool {
        self.period.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn tmp_with(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for name in names {
            let p = dir.path().join(name);
            if name.ends_with('/') {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("{e}"));
            } else {
                std::fs::write(&p, name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        dir
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect()
    }

    #[test]
    fn lists_images_sorted_non_recursive_case_insensitive() {
        let d = tmp_with(&["b.JPG", "a.png", "c.bmp", "notes.txt", "sub.jpg/", "d.jpeg"]);
        let files = list_images(d.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&files), ["a.png", "b.JPG", "c.bmp", "d.jpeg"]);
    }

    #[test]
    fn empty_or_missing_dir_is_a_clear_error() {
        let d = tmp_with(&["readme.md"]);
        let msg = list_images(d.path()).err().map(|e| e.to_string());
        assert!(
            msg.as_deref().is_some_and(|m| m.contains("no images")),
            "{msg:?}"
        );
        let missing = d.path().join("nope");
        let msg = list_images(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("nope") && msg.contains("cannot list"), "{msg}");
    }

    #[test]
    fn file_source_checks_the_path() {
        let d = tmp_with(&["x.txt", "y.png"]);
        assert!(ReplaySource::open_file(&d.path().join("x.txt"), 0.0, false).is_err());
        assert!(ReplaySource::open_file(&d.path().join("missing.png"), 0.0, false).is_err());
        assert!(ReplaySource::open_file(d.path(), 0.0, false).is_err());
        let mut s = ReplaySource::open_file(&d.path().join("y.png"), 0.0, false)
            .unwrap_or_else(|e| panic!("{e}"));
        let f = s.next_frame().ok().flatten().map(|f| f.data);
        assert_eq!(f, Some(FrameData::Encoded(b"y.png".to_vec())));
        assert!(matches!(s.next_frame(), Ok(None)));
    }

    #[test]
    fn once_ends_and_loop_wraps_with_increasing_ids() {
        let d = tmp_with(&["1.jpg", "2.jpg"]);
        let mut once =
            ReplaySource::open_dir(d.path(), 0.0, false).unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        while let Ok(Some(f)) = once.next_frame() {
            got.push(f);
        }
        assert_eq!(got.len(), 2);
        assert_eq!(once.health().state, HealthState::Ended);

        let mut looped =
            ReplaySource::open_dir(d.path(), 0.0, true).unwrap_or_else(|e| panic!("{e}"));
        let frames: Vec<Frame> = (0..5)
            .filter_map(|_| looped.next_frame().ok().flatten())
            .collect();
        let ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        let bodies: Vec<FrameData> = frames.into_iter().map(|f| f.data).collect();
        let one = FrameData::Encoded(b"1.jpg".to_vec());
        let two = FrameData::Encoded(b"2.jpg".to_vec());
        assert_eq!(bodies, [one.clone(), two.clone(), one.clone(), two, one]);
        assert_eq!(looped.health().frames, 5);
    }

    #[test]
    fn only_an_unpaced_replay_is_paced_by_its_consumer() {
        let d = tmp_with(&["1.jpg"]);
        let open =
            |fps| ReplaySource::open_dir(d.path(), fps, true).unwrap_or_else(|e| panic!("{e}"));
        assert!(open(0.0).paced_by_consumer());
        assert!(!open(5.0).paced_by_consumer());
    }

    #[test]
    fn vanished_files_are_skipped_but_all_gone_is_an_error() {
        let d = tmp_with(&["1.jpg", "2.jpg"]);
        let mut s = ReplaySource::open_dir(d.path(), 0.0, true).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(d.path().join("1.jpg")).unwrap_or_else(|e| panic!("{e}"));
        let f = s.next_frame().ok().flatten().map(|f| f.data);
        assert_eq!(f, Some(FrameData::Encoded(b"2.jpg".to_vec())));
        std::fs::remove_file(d.path().join("2.jpg")).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(s.next_frame(), Err(SourceError::Read { .. })));
    }

    #[test]
    fn a_file_over_the_cap_is_skipped_unread() {
        let d = tmp_with(&["1.jpg", "2.jpg"]);
        // 200 MB sparse file: reading it whole would allocate 200 MB.
        std::fs::File::create(d.path().join("1.jpg"))
            .and_then(|f| f.set_len(200_000_000))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut s = ReplaySource::open_dir(d.path(), 0.0, false)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_max_file_bytes(1000);
        let f = s.next_frame().ok().flatten().map(|f| f.data);
        assert_eq!(f, Some(FrameData::Encoded(b"2.jpg".to_vec())));
        assert!(matches!(s.next_frame(), Ok(None)));
        // Only oversized files left: an error that says why.
        let mut s = ReplaySource::open_file(&d.path().join("1.jpg"), 0.0, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = s
            .next_frame()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("over the 33554432-byte limit"), "{err}");
    }

    #[test]
    fn paced_replay_asks_to_sleep_the_period() {
        let d = tmp_with(&["1.jpg"]);
        let mut s = ReplaySource::open_dir(d.path(), 4.0, true).unwrap_or_else(|e| panic!("{e}"));
        let slept = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&slept);
        s.sleeper = Box::new(move |d| log.lock().map(|mut v| v.push(d)).unwrap_or(()));
        for _ in 0..3 {
            assert!(s.next_frame().is_ok());
        }
        let slept = slept.lock().map(|v| v.clone()).unwrap_or_default();
        // The first frame is immediate; later ones wait for their slot (the fake sleeper does
        // not advance the clock, so slots pile up: only the first wait is bounded by a period).
        assert_eq!(slept.len(), 2, "{slept:?}");
        assert!(slept.iter().all(|d| !d.is_zero()), "{slept:?}");
        assert!(slept[0] <= Duration::from_millis(250), "{slept:?}");
        assert!(s.describe().contains("4.000fps"), "{}", s.describe());
    }

    #[test]
    fn pace_never_schedules_in_the_past() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        assert_eq!(pace(t0, None, p), (Duration::ZERO, t0 + p));
        let (wait, due) = pace(t0, Some(t0 + Duration::from_millis(30)), p);
        assert_eq!(wait, Duration::from_millis(30));
        assert_eq!(due, t0 + Duration::from_millis(130));
        let late = t0 + Duration::from_millis(500);
        assert_eq!(pace(late, Some(t0), p), (Duration::ZERO, late + p));
    }
}
