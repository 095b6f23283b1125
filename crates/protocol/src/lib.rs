//! Hyper-V VSS ("Backup") integration-service wire protocol: pure data, no I/O, no unsafe.
//!
//! Layouts follow wire-protocol.md of the hv-vss specification. All integers are
//! little-endian and all structures packed; every parser takes bytes and returns a typed value
//! or a typed error, and never panics.

pub mod vmbus;
pub mod guid;
