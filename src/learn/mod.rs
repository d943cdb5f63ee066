//! The trainable head and everything around it: class-per-folder datasets, the on-disk embedding
//! cache, the trainer (split, L2, class balancing, early stopping), metrics and the head file.

pub mod cache; // embeddings cached on disk, keyed by image content + backbone fingerprint
pub mod cross_engine; // a head trained on another engine: accepted after the agreement check, or refused
pub mod dataset; // class-per-folder scan and the stratified split
pub mod engine_switch; // after an engine switch: stored samples re-keyed when the engines agree, else held
pub mod gate;
pub mod group_head; // fleet heads on the wire (size, checksum) and the adoption rule // the acceptance gate: does a new head replace the active one
pub mod head; // forward pass and the versioned, checksummed head file
pub mod identity; // the one rule for labels and sample ids (Label, SampleId)
pub mod imprint; // the new-class fast path: class mean as new weights, milliseconds
pub mod ingest; // sample validation: labels, sizes, JSON forms, image headers, quotas
pub mod metrics; // accuracy, per-class precision / recall, confusion matrix
pub mod retrain; // the pure retrain core: dataset, content-hash holdout, candidate, gate, refit
pub mod thumbnail; // small JPEG thumbnails of samples and recent frames
pub mod train; // optimizer, validation split, early stopping, training report
