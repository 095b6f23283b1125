//! Simulators of the other side, for tests, benchmarks and `hv-vss simulate`: a Hyper-V host
//! over the shared-memory ring, an emulator of Linux's `hv_snapshot.c` kernel driver, and a
//! sans-IO model of FreeBSD's `hv_snapshot.c` driver.

pub mod freebsd;
pub mod host;
pub mod kernel;
