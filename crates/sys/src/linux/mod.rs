//! Linux's half of the platform seam (selected in `lib.rs`).

pub(crate) mod fs;
pub(crate) mod peer;
pub(crate) mod process;
pub mod uio;
