//! The one crate of hv-vss that may use `unsafe`: syscalls, ioctls and shared memory.
//!
//! Every `unsafe` block carries a `SAFETY:` comment saying why it is sound; every unsafe
//! function documents its contract under `# Safety`. Everything else in the workspace is
//! `#![deny(unsafe_code)]` through the workspace lints.
//!
//! # Platforms
//!
//! The platform is chosen here, once: `platform` is `linux/` or `freebsd/`. The modules at
//! the top offer one interface on both ([`fs`] for opens, stats, locks and the platform's
//! own filesystem calls, [`process`], [`peer`], [`poll`], [`mem`]) and reach the platform's
//! half through `crate::platform`. What exists on one platform only is exported from here
//! under that platform's name: Linux's [`uio`] (`FIFREEZE` and `FITHAW` are in [`fs`]);
//! FreeBSD's `ufs` (`/dev/ufssuspend`) and `fsvss` (`/dev/hv_fsvss_dev`).
#![allow(unsafe_code)]

pub mod fs;
pub mod mem;
pub mod peer;
pub mod poll;
pub mod process;

#[cfg(target_os = "linux")]
#[path = "linux/mod.rs"]
mod platform;

#[cfg(target_os = "freebsd")]
#[path = "freebsd/mod.rs"]
mod platform;

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
compile_error!("hv-vss-sys supports Linux and FreeBSD only");

#[cfg(target_os = "linux")]
pub use platform::uio;

#[cfg(target_os = "freebsd")]
pub use platform::{fsvss, ufs};
