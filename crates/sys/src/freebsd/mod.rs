//! FreeBSD's half of the platform seam (selected in `lib.rs`).
//!
//! Checked with `cargo check` and `cargo clippy` for `x86_64-unknown-freebsd` only: no part
//! of it has run on a FreeBSD machine yet (docs/freebsd.md).

pub(crate) mod fs;
pub mod fsvss;
pub(crate) mod peer;
pub(crate) mod process;
pub mod ufs;

/// The errno of the last failed libc call of this thread.
pub(crate) fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
        .unwrap_or(rustix::io::Errno::IO)
}
