//! (stub) filled in by the learn work.
