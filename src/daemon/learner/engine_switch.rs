//! At start, after an engine switch: samples stored under another engine of the same model are
//! re-keyed to this backbone's fingerprint when the engines agree, in one transaction, so the
//! next retrain still sees them; otherwise they are left out and the count is returned for
//! `stats`. The decision is `learn::engine_switch::plan`; this is the store and the log.

use crate::learn::cross_engine::EngineJudge;
use crate::learn::engine_switch::plan;
use crate::store::{Store, StoreError};

/// Re-keys what the agreement check allows; returns how many samples stay held under another
/// engine (0 when there are none).
pub fn take_over_samples(store: &mut Store, backbone: &dyn EngineJudge) -> Result<u64, StoreError> {
    let current = backbone.fingerprint();
    let keys = store.sample_keys()?;
    let plan = plan(current, &keys, |engine| backbone.agreement(engine));
    if !plan.rekey.is_empty() {
        let from: Vec<&str> = plan.rekey.iter().map(|t| t.key.as_str()).collect();
        let moved = store.rekey_samples(&from, &current.to_string())?;
        for takeover in &plan.rekey {
            log::warn!(
                "{} samples were embedded with engine {}; this backbone runs {} and the two agree \
                 (embedding error {:.1e}): they now count as {}'s",
                takeover.count,
                takeover.engine,
                current.engine,
                takeover.error,
                current.engine
            );
        }
        log::info!("re-keyed {moved} samples to {current}");
    }
    for held in &plan.held {
        log::warn!(
            "{} samples are held under engine {} and left out of retrains: {}; re-teach them \
             (or set model.engine/device/precision back to {})",
            held.count,
            held.engine,
            held.reason,
            held.engine
        );
    }
    Ok(plan.held_count())
}
