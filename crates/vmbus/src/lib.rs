//! Transports that carry VSS requests into hv-vss: a VMBus channel over `uio_hv_generic` or a
//! shared-memory pair (UIO mode), and Linux's `/dev/vmbus/hv_vss` (drop-in mode).
//!
//! All of it is Linux's: on FreeBSD the kernel's `hv_utils` owns the VSS channel and hands
//! requests to the daemon through `/dev/hv_fsvss_dev` (`hv_vss_sys::fsvss`), so this crate
//! is empty there. The channel trait and the IC endpoint are written against rings, not
//! UIO, but live in the UIO module and the shared-memory backend with Linux's eventfd; they
//! follow it.

#[cfg(target_os = "linux")]
pub mod bind;
#[cfg(target_os = "linux")]
pub mod ic_endpoint;
#[cfg(target_os = "linux")]
pub mod kernel_dev;
#[cfg(target_os = "linux")]
pub mod shm;
#[cfg(target_os = "linux")]
pub mod uio;
