//! Simulators of the other side, for tests, benchmarks and `hv-vss simulate`: a Hyper-V host
//! over the shared-memory ring, and an emulator of Linux's `hv_snapshot.c` kernel driver.

pub mod host;
pub mod kernel;
