//! Head versions from the store into the cell: the active one at start (falling back to older
//! versions when a file is corrupt, missing or for another backbone), and any one by number.

use crate::daemon::pipeline::LoadedHead;
use crate::learn::head::Head;
use crate::store::{Store, StoreError};
use crate::vision::spec::Fingerprint;

/// Reads and checks one stored head version (and its gate twin, when it has a usable one).
pub(super) fn load_version(
    store: &Store,
    version: u64,
    fingerprint: &Fingerprint,
) -> Result<Result<LoadedHead, String>, StoreError> {
    let stored = match store.head(version) {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(Err(format!("head v{version} is missing from the store"))),
        Err(err @ StoreError::HeadFile { .. }) => {
            return Ok(Err(format!("head v{version}: {err}")))
        }
        Err(err) => return Err(err),
    };
    let head = match Head::from_bytes(&stored.bytes, Some(fingerprint)) {
        Ok(head) => head,
        Err(err) => return Ok(Err(format!("head v{version} in the store: {err}"))),
    };
    let gate = stored
        .gate_bytes
        .and_then(|bytes| match Head::from_bytes(&bytes, Some(fingerprint)) {
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
    fingerprint: &Fingerprint,
) -> Result<(Option<LoadedHead>, Vec<String>), StoreError> {
    let mut errors = Vec::new();
    let Some(active) = store.active_version()? else {
        return Ok((None, errors));
    };
    let mut candidate = Some(active);
    while let Some(version) = candidate {
        match load_version(store, version, fingerprint)? {
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
