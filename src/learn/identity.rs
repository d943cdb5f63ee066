//! What names a taught sample: its [`Label`] (the class) and its [`SampleId`] (the sender's
//! handle for one sample, echoed in its ack). One rule for each, checked once where outside text
//! enters (the MQTT topic or JSON, the CLI's arguments and folder names) and relied on everywhere
//! after: the store, acks, the export's directory names and `index.tsv`.
//!
//! The rules (docs/mqtt.md "Labels and ids" states them for users):
//! - a label is 1 to 64 characters (Unicode scalar values, so 64 emoji are as fine as 64 ASCII
//!   letters), without `/` `+` `#` (they would change the `sample/{label}` topic or be MQTT
//!   wildcards), control characters, bidirectional-override characters (they make a log line or
//!   a file listing read differently from its bytes), or leading/trailing white space ("cat" and
//!   "cat " would be two classes nobody can tell apart);
//! - an id is 1 to 128 bytes of UTF-8 without control characters (a tab or newline would forge a
//!   row of the export's `index.tsv`; NUL truncates it in C tools) or leading/trailing white
//!   space.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;
/// Longest sample id, in bytes (a sha256 in hex is 64).
pub const MAX_ID_BYTES: usize = 128;
/// Longest directory name a label becomes in an export archive, in bytes: ext4, XFS, APFS and
/// NTFS allow 255, and a 64-character label can take 256.
const MAX_DIR_BYTES: usize = 200;

/// Why a label was refused; `Display` is the ack's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label is empty")]
    Empty,
    #[error("label is {chars} characters, the limit is {MAX_LABEL_CHARS}")]
    TooLong { chars: usize },
    #[error(
        "label {label:?} contains {bad:?}, which is not allowed (no / + #, control or \
         bidirectional-override characters)"
    )]
    BadChar { label: String, bad: char },
    #[error("label {label:?} starts or ends with white space")]
    Padded { label: String },
    #[error("label is not valid UTF-8")]
    NotUtf8,
}

/// Why a sample id was refused; `Display` is the ack's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {bytes} bytes, the limit is {MAX_ID_BYTES}")]
    TooLong { bytes: usize },
    #[error("id contains {bad:?}, which is not allowed (no control characters)")]
    BadChar { bad: char },
    #[error("id starts or ends with white space")]
    Padded,
}

/// Unicode's explicit bidirectional formatting characters (embeddings, overrides, isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A valid label (see the module doc for the rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    /// Checks `text` against the label rule.
    pub fn new(text: impl Into<String>) -> Result<Label, LabelError> {
        let text = text.into();
        if text.is_empty() {
            return Err(LabelError::Empty);
        }
        let chars = text.chars().count();
        if chars > MAX_LABEL_CHARS {
            return Err(LabelError::TooLong { chars });
        }
        if let Some(bad) = text
            .chars()
            .find(|&c| matches!(c, '/' | '+' | '#') || c.is_control() || is_bidi_control(c))
        {
            return Err(LabelError::BadChar { label: text, bad });
        }
        if text.trim() != text {
            return Err(LabelError::Padded { label: text });
        }
        Ok(Label(text))
    }

    /// A label from raw bytes (a topic level, a folder name).
    pub fn from_bytes(bytes: &[u8]) -> Result<Label, LabelError> {
        let text = std::str::from_utf8(bytes).map_err(|_| LabelError::NotUtf8)?;
        Label::new(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The label as one directory name in an export archive: the label itself when it is a
    /// safe, portable file name; otherwise `/`-free and `\`-free, not `.` or `..`, cut to at
    /// most 200 bytes on a character boundary. Two labels may map to the same name (the
    /// export numbers files across the whole archive, so they never collide); `index.tsv`
    /// always holds the exact label.
    pub fn dir_name(&self) -> String {
        portable_dir_name(&self.0)
    }
}

/// Any text as one portable directory name: what [`Label::dir_name`] does, and also safe for a
/// label stored before the rule existed (`/` and control characters become `_`, an empty name
/// becomes `_`).
pub fn portable_dir_name(text: &str) -> String {
    let mut name = String::with_capacity(text.len().min(MAX_DIR_BYTES));
    for c in text.chars() {
        let c = if matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
            || c.is_control()
        {
            '_'
        } else {
            c
        };
        if name.len() + c.len_utf8() > MAX_DIR_BYTES {
            break;
        }
        name.push(c);
    }
    if name.chars().all(|c| c == '.') {
        name.insert(0, '_');
    }
    name
}

impl TryFrom<String> for Label {
    type Error = LabelError;

    fn try_from(text: String) -> Result<Label, LabelError> {
        Label::new(text)
    }
}

impl From<Label> for String {
    fn from(label: Label) -> String {
        label.0
    }
}

impl std::ops::Deref for Label {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Label {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid sample id (see the module doc for the rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SampleId(String);

impl SampleId {
    /// Checks `text` against the id rule.
    pub fn new(text: impl Into<String>) -> Result<SampleId, IdError> {
        let text = text.into();
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong { bytes: text.len() });
        }
        if let Some(bad) = text.chars().find(|c| c.is_control()) {
            return Err(IdError::BadChar { bad });
        }
        if text.trim() != text {
            return Err(IdError::Padded);
        }
        Ok(SampleId(text))
    }

    /// An id the device makes itself, valid by construction: the sha256 of a raw image's bytes
    /// in hex (what `glimpse send` computes too, to match the ack), or `frame-N`.
    pub fn of_content(made_here: String) -> SampleId {
        debug_assert!(SampleId::new(made_here.clone()).is_ok());
        SampleId(made_here)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for SampleId {
    type Error = IdError;

    fn try_from(text: String) -> Result<SampleId, IdError> {
        SampleId::new(text)
    }
}

impl From<SampleId> for String {
    fn from(id: SampleId) -> String {
        id.0
    }
}

impl std::ops::Deref for SampleId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SampleId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SampleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_one_rule() {
        for good in [
            "rock",
            "daisy flower é 🌼",
            "tournesol-été",
            "a b",
            "..",
            "C:\\x",
        ] {
            assert_eq!(Label::new(good).unwrap().as_str(), good);
        }
        // The limit is in characters: 64 four-byte emoji (256 bytes) are a valid label.
        let emoji = "🐈".repeat(64);
        assert_eq!(emoji.len(), 256);
        assert!(Label::new(emoji.clone()).is_ok());
        assert_eq!(
            Label::new(format!("{emoji}🐈")),
            Err(LabelError::TooLong { chars: 65 })
        );
        assert_eq!(Label::new(""), Err(LabelError::Empty));
        for bad in [
            "a/b",
            "a+b",
            "a#b",
            "a\0b",
            "a\nb",
            "a\tb",
            "\u{7f}",
            "a\u{202E}b",
            "a\u{2066}",
        ] {
            let err = Label::new(bad).unwrap_err();
            assert!(matches!(err, LabelError::BadChar { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("not allowed"), "{err}");
        }
        for padded in [" cat", "cat ", "\u{3000}cat"] {
            assert!(matches!(Label::new(padded), Err(LabelError::Padded { .. })));
        }
        assert_eq!(Label::from_bytes(b"a\xffb"), Err(LabelError::NotUtf8));
        assert_eq!(Label::from_bytes(b"ok").unwrap().as_str(), "ok");
    }

    #[test]
    fn labels_deserialize_only_when_valid() {
        let ok: Label = serde_json::from_str("\"cat\"").unwrap();
        assert_eq!(ok.as_str(), "cat");
        assert!(serde_json::from_str::<Label>("\"a/b\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"cat\"");
    }

    #[test]
    fn dir_names_are_portable_and_short() {
        let name = |l: &str| Label::new(l).unwrap().dir_name();
        assert_eq!(name("daisy"), "daisy");
        assert_eq!(name("été 🌼"), "été 🌼");
        assert_eq!(name(".."), "_..");
        assert_eq!(name("."), "_.");
        assert_eq!(name("a\\b:c?"), "a_b_c_");
        let long = name(&"🐈".repeat(64));
        assert_eq!(long.len(), 200);
        assert_eq!(long, "🐈".repeat(50));
        // Labels stored before the rule existed still make one safe component.
        assert_eq!(portable_dir_name("a/b\n"), "a_b_");
        assert_eq!(portable_dir_name(""), "_");
        assert_eq!(portable_dir_name(&"é".repeat(300)).len(), 200);
    }

    #[test]
    fn ids_follow_one_rule() {
        for good in [
            "cli-1-2",
            "frame-17",
            &"a".repeat(128),
            "id with space",
            "é",
        ] {
            assert!(SampleId::new(good).is_ok(), "{good:?}");
        }
        assert_eq!(SampleId::new(""), Err(IdError::Empty));
        assert_eq!(
            SampleId::new("x".repeat(100_000)),
            Err(IdError::TooLong { bytes: 100_000 })
        );
        assert_eq!(
            SampleId::new("a\nb\tc"),
            Err(IdError::BadChar { bad: '\n' })
        );
        assert_eq!(SampleId::new("\0\0\0"), Err(IdError::BadChar { bad: '\0' }));
        assert_eq!(SampleId::new(" x"), Err(IdError::Padded));
        assert!(serde_json::from_str::<SampleId>("\"a\\tb\"").is_err());
    }
}
