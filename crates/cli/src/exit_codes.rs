//! Exit codes of `hv-vss` shared by the commands added for operating it (`simulate`,
//! `status`, `history`, `metrics`); `plan`/`freeze`/`thaw` and `uio` keep their own,
//! documented beside them. The whole table is in docs/cli.md.

// 1: the result is a failure the command reports, or an unexpected error.
// 2: bad command line (clap).

/// Needs root, or permission denied on the daemon's files or control socket.
pub const NOT_ROOT: u8 = 3;
/// The daemon is not running (`status` then shows what the state files say).
pub const DAEMON_DOWN: u8 = 10;
/// A state file is unusable (unreadable, too large), or stdout failed.
pub const STATE_CORRUPT: u8 = 11;
/// `simulate` could not set up the simulation (daemon missing, no tmpfs, mkfs or mount
/// failed, the guest did not connect).
pub const SETUP_FAILED: u8 = 12;
