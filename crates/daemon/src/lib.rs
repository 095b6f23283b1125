//! The modules of `hv-vssd` (the binary is `src/main.rs`). This library exists so that the
//! daemon's parsers of untrusted input (the config file, control requests, the app journal)
//! can be fuzzed from `fuzz/` and benched; it is not a stable API.

pub mod apps;
pub mod completion;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod fdlimit;
pub mod fsworker;
pub mod guardian;
pub mod history;
pub mod kmsg;
pub mod logbuf;
pub mod manpages;
pub mod metrics;
pub mod safety;
pub mod transport;
