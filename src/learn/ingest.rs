//! Sample validation, before anything is decoded, embedded or stored. Pure functions over plain
//! data: the label rules, the payload cap, the JSON sample forms, the image header check and the
//! quotas each answer with a [`Rejection`] whose message becomes the ack's `reason`.
//!
//! The order is cheapest first (size, label, JSON shape, header, quota), so a hostile payload
//! costs as little as possible: no image is decoded before its header passed the pixel limit.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::identity::{IdError, Label, LabelError, SampleId};
use crate::vision::decode::{decode_image, DecodeLimits};

pub use super::identity::MAX_LABEL_CHARS;

/// Why a sample was refused; `Display` is the ack's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("empty payload")]
    EmptyPayload,
    #[error("payload is {size} bytes, over learning.max_sample_bytes = {max}")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("malformed sample JSON: {0}")]
    BadJson(String),
    #[error("sample JSON needs exactly one of `image` (base64) or `frame_id`")]
    NeedImageOrFrame,
    #[error("`image` is not valid base64: {0}")]
    BadBase64(String),
    #[error("not a usable image: {0}")]
    BadImage(String),
    #[error("frame {0} is not among the recently published frames")]
    UnknownFrame(u64),
    #[error("label {label:?} already has {count} samples, the limit is {max} (forget some first)")]
    LabelQuota { label: String, count: u64, max: u64 },
    #[error("the store holds {count} samples, the limit is {max}")]
    TotalQuota { count: u64, max: u64 },
    #[error("there are already {count} labels, the limit is {max}")]
    LabelCountQuota { count: u64, max: u64 },
    #[error("teaching is disabled on this device (learning.enabled = false)")]
    Disabled,
    #[error("the device is busy ({0}); send the sample again later")]
    Busy(String),
    #[error("cannot store the sample: {0}")]
    Internal(String),
}

/// Size and count limits (from `[learning]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleLimits {
    pub max_bytes: usize,
    pub max_pixels: u64,
    pub max_per_label: u64,
    pub max_total: u64,
    pub max_labels: u64,
}

impl SampleLimits {
    /// The decoder limits that match these sample limits.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_bytes: self.max_bytes,
            max_pixels: self.max_pixels,
        }
    }
}

/// Checks a label against the one rule ([`Label`]); `Label::new` gives the typed value.
pub fn validate_label(label: &str) -> Result<(), Rejection> {
    Label::new(label)?;
    Ok(())
}

/// A label from raw bytes (e.g. a JSON string decoded leniently elsewhere).
pub fn label_from_bytes(bytes: &[u8]) -> Result<String, Rejection> {
    Ok(Label::from_bytes(bytes)?.into_string())
}

/// The payload size cap (empty payloads are refused too).
pub fn check_payload_size(len: usize, limits: &SampleLimits) -> Result<(), Rejection> {
    if len == 0 {
        return Err(Rejection::EmptyPayload);
    }
    if len > limits.max_bytes {
        return Err(Rejection::TooLarge {
            size: len,
            max: limits.max_bytes,
        });
    }
    Ok(())
}

/// The JSON sample message on `{p}/{d}/sample`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSampleJson {
    id: Option<String>,
    label: String,
    image: Option<String>,
    frame_id: Option<u64>,
}

/// What a JSON sample asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleContent {
    /// Encoded image bytes (from base64).
    Image(Vec<u8>),
    /// A frame the device published recently.
    Frame(u64),
}

/// A parsed, validated JSON sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSample {
    /// The sender's id, echoed in the ack; default the content hash (image) or `frame-N`.
    pub id: Option<SampleId>,
    pub label: Label,
    pub content: SampleContent,
}

/// Best effort: the `id` of a JSON message, for the ack of a message that is otherwise refused.
/// Only a valid id is echoed (never a forged, empty or 100 kB one).
pub fn json_id_hint(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = value.get("id")?.as_str()?;
    SampleId::new(id).ok().map(SampleId::into_string)
}

/// Parses `{id?, label, image (base64) | frame_id}`; validates the size, the label and the id.
pub fn parse_json_sample(payload: &[u8], limits: &SampleLimits) -> Result<JsonSample, Rejection> {
    check_payload_size(payload.len(), limits)?;
    let raw: RawSampleJson =
        serde_json::from_slice(payload).map_err(|e| Rejection::BadJson(e.to_string()))?;
    let label = Label::new(raw.label)?;
    let id = raw.id.map(SampleId::new).transpose()?;
    let content = match (raw.image, raw.frame_id) {
        (Some(image), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(image.trim())
                .map_err(|e| Rejection::BadBase64(e.to_string()))?;
            check_payload_size(bytes.len(), limits)?;
            SampleContent::Image(bytes)
        }
        (None, Some(frame)) => SampleContent::Frame(frame),
        _ => return Err(Rejection::NeedImageOrFrame),
    };
    Ok(JsonSample { id, label, content })
}

/// Decodes an image within the limits (the header is checked before any pixel is decoded).
pub fn decode_sample(bytes: &[u8], limits: &SampleLimits) -> Result<image::RgbImage, Rejection> {
    check_payload_size(bytes.len(), limits)?;
    decode_image(bytes, &limits.decode_limits()).map_err(|e| Rejection::BadImage(e.to_string()))
}

/// Whether one more sample of `label` fits: per label, in total, and in the number of labels.
pub fn check_quota(
    counts: &BTreeMap<String, u64>,
    label: &str,
    limits: &SampleLimits,
) -> Result<(), Rejection> {
    let count = counts.get(label).copied().unwrap_or(0);
    if count >= limits.max_per_label {
        return Err(Rejection::LabelQuota {
            label: label.to_string(),
            count,
            max: limits.max_per_label,
        });
    }
    let total: u64 = counts.values().sum();
    if total >= limits.max_total {
        return Err(Rejection::TotalQuota {
            count: total,
            max: limits.max_total,
        });
    }
    let labels = counts.len() as u64;
    if count == 0 && labels >= limits.max_labels {
        return Err(Rejection::LabelCountQuota {
            count: labels,
            max: limits.max_labels,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SampleLimits = SampleLimits {
        max_bytes: 1000,
        max_pixels: 10_000,
        max_per_label: 3,
        max_total: 5,
        max_labels: 2,
    };

    #[test]
    fn labels_use_the_one_rule() {
        assert!(validate_label("daisy flower é 🌼").is_ok());
        assert!(validate_label(&"🐈".repeat(64)).is_ok());
        let err = validate_label("a/b").unwrap_err();
        assert!(matches!(err, Rejection::Label(LabelError::BadChar { .. })));
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert_eq!(
            label_from_bytes(b"a\xffb"),
            Err(Rejection::Label(LabelError::NotUtf8))
        );
        assert_eq!(label_from_bytes(b"ok").unwrap(), "ok");
    }

    #[test]
    fn payload_size() {
        assert_eq!(check_payload_size(0, &LIMITS), Err(Rejection::EmptyPayload));
        assert!(check_payload_size(1000, &LIMITS).is_ok());
        assert_eq!(
            check_payload_size(1001, &LIMITS),
            Err(Rejection::TooLarge {
                size: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn json_samples() {
        let s = parse_json_sample(br#"{"id":"x1","label":"rock","frame_id":7}"#, &LIMITS).unwrap();
        assert_eq!(s.id.as_deref(), Some("x1"));
        assert_eq!(s.content, SampleContent::Frame(7));
        let s = parse_json_sample(br#"{"label":"rock","image":"AAEC"}"#, &LIMITS).unwrap();
        assert_eq!(s.content, SampleContent::Image(vec![0, 1, 2]));
        let bad = |p: &[u8]| parse_json_sample(p, &LIMITS).unwrap_err();
        assert!(matches!(bad(b"{not json"), Rejection::BadJson(_)));
        assert!(matches!(
            bad(br#"{"label":"a"}"#),
            Rejection::NeedImageOrFrame
        ));
        assert!(matches!(
            bad(br#"{"label":"a","image":"AAEC","frame_id":1}"#),
            Rejection::NeedImageOrFrame
        ));
        assert!(matches!(
            bad(br#"{"label":"a","image":"%%%"}"#),
            Rejection::BadBase64(_)
        ));
        assert!(matches!(
            bad(br#"{"label":"a/b","frame_id":1}"#),
            Rejection::Label(LabelError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(
            bad(br#"{"label":"a\u0000","frame_id":1}"#),
            Rejection::Label(LabelError::BadChar { bad: '\0', .. })
        ));
        // Ids follow one rule too: a tab or newline would forge a row of the export index.
        for (id, want) in [
            (r#""a\nb\tc""#, IdError::BadChar { bad: '\n' }),
            (r#""""#, IdError::Empty),
            (r#""\u0000\u0000""#, IdError::BadChar { bad: '\0' }),
        ] {
            let payload = format!(r#"{{"id":{id},"label":"a","frame_id":1}}"#);
            assert_eq!(bad(payload.as_bytes()), Rejection::Id(want), "{id}");
            assert_eq!(json_id_hint(payload.as_bytes()), None, "not echoed: {id}");
        }
        let long = format!(
            r#"{{"id":"{}","label":"a","frame_id":1}}"#,
            "x".repeat(100_000)
        );
        let big = SampleLimits {
            max_bytes: 1 << 20,
            ..LIMITS
        };
        assert_eq!(
            parse_json_sample(long.as_bytes(), &big).unwrap_err(),
            Rejection::Id(IdError::TooLong { bytes: 100_000 })
        );
        assert!(matches!(
            bad(br#"{"label":"a","frame_id":1,"extra":2}"#),
            Rejection::BadJson(_)
        ));
        assert_eq!(bad(b""), Rejection::EmptyPayload);
        assert_eq!(
            json_id_hint(br#"{"id":"q","label":"a/b"}"#).as_deref(),
            Some("q")
        );
        assert_eq!(json_id_hint(b"nope"), None);
    }

    #[test]
    fn images() {
        assert!(matches!(
            decode_sample(b"not an image", &LIMITS),
            Err(Rejection::BadImage(_))
        ));
        // A PNG header declaring 30000 x 30000 is refused from the header alone.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&30000u32.to_be_bytes());
        png.extend_from_slice(&30000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode_sample(&png, &LIMITS).unwrap_err();
        assert!(err.to_string().contains("30000"), "{err}");
        let jpeg = crate::vision::decode::synthetic_jpeg(64, 48, 90).unwrap();
        let big = SampleLimits {
            max_bytes: 1 << 20,
            ..LIMITS
        };
        assert_eq!(decode_sample(&jpeg, &big).unwrap().dimensions(), (64, 48));
        let truncated = &jpeg[..jpeg.len() / 2];
        assert!(matches!(
            decode_sample(truncated, &big),
            Err(Rejection::BadImage(_))
        ));
    }

    #[test]
    fn quotas() {
        let mut counts = BTreeMap::new();
        assert!(check_quota(&counts, "a", &LIMITS).is_ok());
        counts.insert("a".to_string(), 3);
        assert!(matches!(
            check_quota(&counts, "a", &LIMITS),
            Err(Rejection::LabelQuota {
                count: 3,
                max: 3,
                ..
            })
        ));
        assert!(check_quota(&counts, "b", &LIMITS).is_ok());
        counts.insert("b".to_string(), 1);
        assert!(matches!(
            check_quota(&counts, "c", &LIMITS),
            Err(Rejection::LabelCountQuota { count: 2, max: 2 })
        ));
        counts.insert("b".to_string(), 2);
        assert!(matches!(
            check_quota(&counts, "b", &LIMITS),
            Err(Rejection::TotalQuota { count: 5, max: 5 })
        ));
    }
}
