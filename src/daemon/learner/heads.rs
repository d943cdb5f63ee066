//! Head versions from the store into the cell: the active one at start (falling back to older
//! versions when a file is corrupt, missing or for another backbone), and any one by number.
//! A version trained with another engine of the same model goes through the cross-engine rule
//! (`learn::cross_engine`), like a head file does.

use crate::daemon::pipeline::LoadedHead;
use crate::learn::cross_engine::{accept_head_bytes, EngineJudge};
use crate::store::{Store, StoreError};

/// Reads and checks one stored head version (and its gate twin, when it has a usable one).
pub(super) fn load_version(
    store: &Store,
    version: u64,
    judge: &dyn EngineJudge,
) -> Result<Result<LoadedHead, String>, StoreError> {
    let stored = match store.head(version) {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(Err(format!("head v{version} is missing from the store"))),
        Err(err @ StoreError::HeadFile { .. }) => {
            return Ok(Err(format!("head v{version}: {err}")))
        }
        Err(err) => return Err(err),
    };
    let name = format!("v{version}");
    let head = match accept_head_bytes(&stored.bytes, &name, judge) {
        Ok(head) => head,
        Err(err) => return Ok(Err(format!("head v{version} in the store: {err}"))),
    };
    let gate_name = format!("v{version} (gate twin)");
    let gate = stored
        .gate_bytes
        .and_then(|bytes| match accept_head_bytes(&bytes, &gate_name, judge) {
            Ok(gate) => Some(gate),
            Err(err) => {
                log::warn!("gate twin of head v{version} unusable ({err}): gating against v{version} itself");
                None
            }
        });
    Ok(Ok(LoadedHead {
        head,
        version,
        gate,
        provisional: false,
    }))
}

/// Loads the active head from the store; a corrupt, missing or foreign version falls back to the
/// previous one (which becomes active). Returns the head and one message per refused version.
pub fn restore_head(
    store: &mut Store,
    judge: &dyn EngineJudge,
) -> Result<(Option<LoadedHead>, Vec<String>), StoreError> {
    let mut errors = Vec::new();
    let Some(active) = store.active_version()? else {
        return Ok((None, errors));
    };
    let mut candidate = Some(active);
    while let Some(version) = candidate {
        match load_version(store, version, judge)? {
            Ok(loaded) => {
                if version != active {
                    store.set_active(version)?;
                    errors.push(format!("using head v{version} instead of v{active}"));
                }
                return Ok((Some(loaded), errors));
            }
            Err(error) => errors.push(error),
        }
        candidate = store.previous_version(version)?;
    }
    errors.push("no usable head version: publishing ImageNet classes".into());
    Ok((None, errors))
}
