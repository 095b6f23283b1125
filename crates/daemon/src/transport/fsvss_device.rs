//! The real `/dev/hv_fsvss_dev` behind [`super::fsvss::FsVssDevice`]: FreeBSD's device
//! where it exists, and elsewhere a device that cannot be opened, so the transport enum and
//! its logic are the same on every platform and only this module differs.

#[cfg(target_os = "freebsd")]
mod freebsd;
#[cfg(target_os = "freebsd")]
pub use freebsd::FsVssDev;

#[cfg(not(target_os = "freebsd"))]
mod unavailable;
#[cfg(not(target_os = "freebsd"))]
pub use unavailable::FsVssDev;
