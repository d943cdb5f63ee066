//! Loading a head for a backbone that may run on another engine than the one it was trained
//! with (docs/learning.md "Changing engines"). Same fingerprint: loaded as always. Same model
//! but another engine/device/precision: both engines embed the agreement check's inputs; within
//! tolerance the head is used (and re-labelled with this engine), otherwise it is refused with
//! a message that says how to fix it. Anything else is the usual fingerprint refusal.

use std::path::Path;

use super::head::{Head, HeadError};
use crate::vision::backbone::{check_agreement, Backbone};

/// Reads the head at `path` for `backbone`, applying the cross-engine rule above.
pub fn load_head_for(path: &Path, backbone: &Backbone) -> Result<Head, HeadError> {
    let current = backbone.fingerprint();
    match Head::load(path, Some(current)) {
        Err(HeadError::FingerprintMismatch { file, trained, .. })
            if trained.same_model(current) =>
        {
            match check_agreement(backbone, &trained.engine) {
                Ok(error) => {
                    log::warn!(
                        "head {file} was trained with engine {}; this backbone runs {} and the two \
                         agree (embedding error {error:.1e}): using it",
                        trained.engine,
                        current.engine
                    );
                    let mut head = Head::load(path, None)?;
                    head.rebind(current.clone());
                    Ok(head)
                }
                Err(reason) => Err(HeadError::EngineDisagrees {
                    file,
                    trained: trained.engine.clone(),
                    current: current.engine.clone(),
                    reason,
                }),
            }
        }
        other => other,
    }
}
