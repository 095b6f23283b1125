//! The one crate of hv-vss that may use `unsafe`: syscalls, ioctls and shared memory.
//!
//! Every `unsafe` block carries a `SAFETY:` comment saying why it is sound; every unsafe
//! function documents its contract under `# Safety`. Everything else in the workspace is
//! `#![deny(unsafe_code)]` through the workspace lints.
#![allow(unsafe_code)]

pub mod fs;
pub mod mem;
pub mod process;
pub mod uio;
