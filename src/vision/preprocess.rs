//! (stub) filled in by the vision work.
