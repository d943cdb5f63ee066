//! Head tests: forward pass consistency and the head file's refusal of corrupt, truncated and
//! foreign files.

use super::*;
use crate::learn::train::{train, Dataset, TrainConfig};
use crate::vision::spec::Fingerprint;

fn fingerprint(dim: usize) -> Fingerprint {
    Fingerprint {
        engine: crate::vision::spec::DEFAULT_ENGINE.into(),
        model_sha256: "ab".repeat(32),
        embedding_tensor: "features".into(),
        dim,
    }
}

/// A small trained head over 6-d embeddings of 3 classes, plus its training data.
fn trained(kind: HeadKind) -> (Head, Vec<f32>) {
    let dim = 6;
    let x: Vec<f32> = (0..90)
        .flat_map(|i| (0..dim).map(move |j| ((i * 7 + j * 3) % 11) as f32 + (i % 3 * j) as f32))
        .collect();
    let y: Vec<usize> = (0..90).map(|i| i % 3).collect();
    let classes: Vec<String> = ["paper", "rock", "scissors"].map(String::from).to_vec();
    let data = Dataset {
        features: &x,
        dim,
        labels: &y,
        classes: &classes,
    };
    let cfg = TrainConfig {
        kind,
        max_iterations: 30,
        ..TrainConfig::default()
    };
    let head = train(&data, &fingerprint(dim), &cfg, &mut |_| {}).expect("training succeeds");
    (head, x)
}

#[test]
fn predict_and_predict_batch_agree_and_sum_to_one() {
    for kind in [HeadKind::Linear, HeadKind::Mlp { hidden: 5 }] {
        let (head, x) = trained(kind);
        let batch = head.predict_batch(&x, 90);
        for (i, row) in x.chunks_exact(6).enumerate() {
            let single = head.predict(row).unwrap();
            assert!((single.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            for (a, b) in single.iter().zip(&batch[i * 3..(i + 1) * 3]) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{kind:?} row {i}: {single:?} vs batch"
                );
            }
        }
    }
}

#[test]
fn predict_checks_dimension_and_finiteness() {
    let (head, _) = trained(HeadKind::Linear);
    let err = head.predict(&[0.0; 5]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "embedding has 5 values, the head expects 6"
    );
    let err = head
        .predict(&[0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0])
        .unwrap_err();
    assert!(matches!(err, HeadError::NonFinite(2)), "{err}");
}

#[test]
fn bytes_round_trip_to_an_identical_head() {
    for kind in [HeadKind::Linear, HeadKind::Mlp { hidden: 5 }] {
        let (head, _) = trained(kind);
        let bytes = head.to_bytes();
        assert_eq!(&bytes[..8], b"GLMPHEAD");
        let back = Head::from_bytes(&bytes, Some(&fingerprint(6))).unwrap();
        let mut want = head.clone();
        want.report_mut().duration_ms = 0; // not stored, so files are reproducible
        assert_eq!(back, want);
        assert_eq!(back.to_bytes(), bytes);
    }
}

#[test]
fn any_flipped_byte_is_refused() {
    let (head, _) = trained(HeadKind::Linear);
    let bytes = head.to_bytes();
    let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let blob_start = PREAMBLE_LEN + header_len;
    let positions = [
        0,                // magic
        9,                // version
        13,               // header length
        17,               // blob length
        PREAMBLE_LEN + 3, // JSON header
        PREAMBLE_LEN + header_len / 2,
        blob_start, // first parameter
        blob_start + 37,
        bytes.len() - CHECKSUM_LEN - 1, // last parameter byte
        bytes.len() - 1,                // checksum
    ];
    for pos in positions {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[pos] ^= bit;
            let err = Head::from_bytes(&bad, None).expect_err("a flipped byte must be refused");
            let msg = err.to_string();
            assert!(msg.contains("(in-memory head)"), "byte {pos}: {msg}");
        }
    }
    let mut bad = bytes.clone();
    bad[PREAMBLE_LEN + 5] ^= 0x04;
    assert_eq!(
        Head::from_bytes(&bad, None).unwrap_err().to_string(),
        "corrupt head file (in-memory head): checksum mismatch"
    );
}

#[test]
fn truncated_or_extended_files_are_refused() {
    let (head, _) = trained(HeadKind::Linear);
    let bytes = head.to_bytes();
    for len in [
        0,
        4,
        8,
        15,
        23,
        24,
        100,
        bytes.len() / 2,
        bytes.len() - 32,
        bytes.len() - 1,
    ] {
        let err = Head::from_bytes(&bytes[..len], None).expect_err("truncated must be refused");
        assert!(
            matches!(
                err,
                HeadError::Truncated { .. } | HeadError::BadMagic { .. }
            ),
            "length {len}: {err}"
        );
    }
    let err = Head::from_bytes(&bytes[..bytes.len() - 1], None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("corrupt head file (in-memory head): truncated"),
        "{err}"
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Head::from_bytes(&longer, None),
        Err(HeadError::Corrupt { .. })
    ));
}

#[test]
fn bad_magic_and_newer_version_are_named() {
    let (head, _) = trained(HeadKind::Linear);
    let err = Head::from_bytes(b"PK\x03\x04 not a head at all, a zip", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "(in-memory head) is not a glimpse head file (bad magic)"
    );
    let mut bytes = head.to_bytes();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = Head::from_bytes(&bytes, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "head file (in-memory head) has format version 2, this build reads version 1"
    );
}

#[test]
fn a_head_for_another_backbone_is_refused() {
    let (head, _) = trained(HeadKind::Linear);
    let other = Fingerprint {
        model_sha256: "cd".repeat(32),
        ..fingerprint(6)
    };
    let err = Head::from_bytes(&head.to_bytes(), Some(&other)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "head (in-memory head) was trained for backbone abababababab:features[6], this backbone is cdcdcdcdcdcd:features[6]"
    );
    // Without an expectation it loads (e.g. to inspect it).
    assert!(Head::from_bytes(&head.to_bytes(), None).is_ok());
}

#[test]
fn save_is_atomic_and_load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.glmp");
    let (head, _) = trained(HeadKind::Linear);
    head.save(&path).unwrap();
    head.save(&path).unwrap(); // replacing an existing file works too
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("head.glmp")],
        "no temporary file left behind"
    );
    let back = Head::load(&path, Some(&fingerprint(6))).unwrap();
    assert_eq!(back.to_bytes(), head.to_bytes());

    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let err = Head::load(&path, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("corrupt head file {}: checksum mismatch", path.display())
    );
    let missing = dir.path().join("missing.glmp");
    let err = Head::load(&missing, None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read head file {}: ", missing.display())),
        "{err}"
    );
}
