//! Hyper-V VSS ("Backup") integration-service wire protocol: pure data, no I/O, no unsafe.
//!
//! Layouts follow wire-protocol.md of the hv-vss specification. All integers are
//! little-endian and all structures packed; every parser takes bytes and returns a typed value
//! or a typed error, and never panics.
//!
//! - [`vmbus`]: the VMBus packet descriptor and trailer (§2.3).
//! - [`ic`]: pipe header, IC message header, parsing and reply framing (§4).
//! - [`negotiate`]: version negotiation, guest and host sides (§5).
//! - [`vss`]: the VSS message, reply builders and UIO-mode routing (§6).
//! - [`status`]: HRESULT status codes (§7).
//! - [`kernel`]: Linux's `/dev/vmbus/hv_vss` daemon ABI, daemon and kernel sides (§8).
//! - [`freebsd`]: FreeBSD's `/dev/hv_fsvss_dev` daemon ABI and UFS suspend ioctl numbers.
//! - [`guid`]: the VSS class GUID (§1).

pub mod freebsd;
pub mod guid;
pub mod ic;
pub mod kernel;
pub mod negotiate;
pub mod status;
pub mod vmbus;
pub mod vss;

pub use ic::Version;
pub use status::HvStatus;
pub use vss::VssOperation;
