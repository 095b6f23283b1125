//! Transports that carry VSS requests into hv-vss: a VMBus channel over `uio_hv_generic` or a
//! shared-memory pair (UIO mode), and Linux's `/dev/vmbus/hv_vss` (drop-in mode).

pub mod bind;
pub mod ic_endpoint;
pub mod kernel_dev;
pub mod shm;
pub mod uio;
