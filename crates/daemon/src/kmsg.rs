//! Urgent lines to the kernel log while filesystems are frozen (R61: "urgent lines may go
//! to `/dev/kmsg`").
//!
//! # Kernel contract
//!
//! Each `write(2)` to `/dev/kmsg` becomes one record of the kernel's printk ring buffer, in
//! memory: the write path never touches a disk, so it cannot block on a frozen filesystem
//! (journald or rsyslog copy the record to disk later, on their own threads). A leading
//! `<N>` sets the syslog priority; a userspace record without a facility gets `LOG_USER`.
//! A record longer than the kernel's line limit (about 1 KiB) is refused with `EINVAL`, and
//! the kernel rate-limits writes per open file (`printk.devkmsg=ratelimit`, the default:
//! bursts of 10 per 5 s, the rest dropped and counted); `printk.devkmsg=off` makes the
//! open fail with `EPERM`.
//!
//! # Design
//!
//! While anything of ours is frozen, every log line is held in memory ([`crate::logbuf`])
//! and only written after the last thaw, so an administrator sees nothing while the daemon
//! is stuck frozen. The few conditions that mean something went wrong *while frozen* (a
//! thaw failing and being retried, a FIFREEZE past its deadline, the guardian dying, the
//! transport lost) also write one short line here, prefixed `hv-vssd: `. Nothing else ever
//! does: normal operation writes no kmsg line.
//!
//! - The device is opened once at start-up, before any freeze (`O_WRONLY | O_NONBLOCK |
//!   O_CLOEXEC`): no path lookup or open while frozen. If it cannot be opened (a container
//!   without `/dev/kmsg`, `devkmsg=off`), urgent lines go only to the held log.
//! - One `write(2)` per line, non-blocking, every error (`EAGAIN`, `EINVAL`, `EPERM`...)
//!   ignored: the line is a courtesy, never a reason to wait.
//! - Rate limit: at most one line per [`Urgent`] kind per [`KMSG_INTERVAL`]; the next line
//!   of that kind says how many were suppressed. With six kinds this is at most six lines
//!   per interval, below the kernel's own limit.
//! - Last words: the panic hook and the fatal exit cannot reach the main loop's `Kmsg`, so
//!   a second one, opened at the same time, is kept for them ([`set_last_words`],
//!   [`last_words`]): a panic while frozen, and an exit while frozen with the number of
//!   held lines it loses, leave their text in the kernel log. The panic hook may run while
//!   the lock is taken (a panic inside [`last_words`] itself): it never waits for it.
//! - The path is injectable (hidden `--kmsg PATH`) so tests can point it at a file or FIFO.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

/// Where the kernel log is written.
pub const DEFAULT_KMSG: &str = "/dev/kmsg";

/// At most one line per kind per this interval.
pub const KMSG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest text written (the kernel refuses lines over about 1 KiB; ours stay short).
const MAX_TEXT: usize = 400;

/// The conditions worth a kernel log line: each means something went wrong while frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgent {
    /// FITHAW failed (or a thaw ran out of time): filesystems stay frozen, retried.
    ThawFailing,
    /// A FIFREEZE did not return within its deadline.
    FreezeDeadline,
    /// The guardian process died while frozen.
    GuardianDied,
    /// The host transport was lost while frozen.
    TransportLost,
    /// The daemon is exiting with filesystems still frozen.
    ExitingFrozen,
    /// A panic while frozen: its text, held with the other lines, dies with the process
    /// if the panic ends it.
    Panic,
}

impl Urgent {
    const COUNT: usize = 6;

    fn index(self) -> usize {
        match self {
            Self::ThawFailing => 0,
            Self::FreezeDeadline => 1,
            Self::GuardianDied => 2,
            Self::TransportLost => 3,
            Self::ExitingFrozen => 4,
            Self::Panic => 5,
        }
    }

    /// Syslog priority: `3` (err) while filesystems may stay frozen for good, `4`
    /// (warning) when the daemon is already thawing.
    fn priority(self) -> u8 {
        match self {
            Self::ThawFailing | Self::ExitingFrozen | Self::FreezeDeadline | Self::Panic => 3,
            Self::GuardianDied | Self::TransportLost => 4,
        }
    }
}

/// The kernel log, opened once; writes urgent lines, rate-limited, never blocking.
#[derive(Debug, Default)]
pub struct Kmsg {
    fd: Option<OwnedFd>,
    last: [Option<Instant>; Urgent::COUNT],
    suppressed: [u64; Urgent::COUNT],
}

impl Kmsg {
    /// `open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)`. On failure the result
    /// writes nothing; the error is returned beside it for the caller to log.
    pub fn open(path: &Path) -> (Self, Option<rustix::io::Errno>) {
        match rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => (
                Self {
                    fd: Some(fd),
                    ..Self::default()
                },
                None,
            ),
            Err(e) => (Self::default(), Some(e)),
        }
    }

    /// Whether lines can be written at all.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Writes `<P>hv-vssd: {text}` as one record unless a line of this kind went out less
    /// than [`KMSG_INTERVAL`] ago. Returns whether a write was attempted.
    pub fn urgent(&mut self, kind: Urgent, now: Instant, text: &str) -> bool {
        let Some(fd) = &self.fd else {
            return false;
        };
        let i = kind.index();
        if self.last[i].is_some_and(|t| now.saturating_duration_since(t) < KMSG_INTERVAL) {
            self.suppressed[i] += 1;
            return false;
        }
        self.last[i] = Some(now);
        let suppressed = std::mem::take(&mut self.suppressed[i]);
        let line = format_line(kind, text, suppressed);
        // One record per write; EAGAIN, EINVAL, EPERM, a short write: all ignored.
        let _ = rustix::io::write(fd, line.as_bytes());
        true
    }
}

/// The kernel log for the panic hook and the fatal exit.
static LAST_WORDS: Mutex<Option<Kmsg>> = Mutex::new(None);

/// From now on [`last_words`] writes to `kmsg`.
pub fn set_last_words(kmsg: Kmsg) {
    *LAST_WORDS.lock().unwrap_or_else(|p| p.into_inner()) = Some(kmsg);
}

/// Writes `text` as an urgent line of `kind` to the kernel log given to
/// [`set_last_words`] (rate-limited like every urgent line). Never waits: if the log is in
/// use (a panic while writing to it), the line is not written. Returns whether a write
/// was attempted.
pub fn last_words(kind: Urgent, text: &str) -> bool {
    let mut guard = match LAST_WORDS.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    guard
        .as_mut()
        .is_some_and(|k| k.urgent(kind, Instant::now(), text))
}

/// `<P>hv-vssd: text[ (N similar lines suppressed)]\n`, the text cut at [`MAX_TEXT`] bytes
/// on a character boundary and kept to one line.
fn format_line(kind: Urgent, text: &str, suppressed: u64) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text: String = text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut line = format!("<{}>hv-vssd: {text}", kind.priority());
    if suppressed > 0 {
        line.push_str(&format!(" ({suppressed} similar lines suppressed)"));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn fifo() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        (dir, path)
    }

    /// A non-blocking reader on the FIFO (opened first: a non-blocking writer needs one).
    fn reader(path: &Path) -> std::fs::File {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        std::fs::File::from(fd)
    }

    fn read_all(r: &mut std::fs::File) -> String {
        let mut buf = vec![0u8; 1 << 20];
        match r.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => String::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn an_urgent_line_is_one_prefixed_record_with_its_priority() {
        let (_dir, path) = fifo();
        let mut r = reader(&path);
        let (mut k, err) = Kmsg::open(&path);
        assert!(err.is_none() && k.is_open());
        let t0 = Instant::now();
        assert!(k.urgent(Urgent::ThawFailing, t0, "FITHAW failed on /mnt/a: EIO"));
        assert!(k.urgent(Urgent::TransportLost, t0, "transport\nlost"));
        assert_eq!(
            read_all(&mut r),
            "<3>hv-vssd: FITHAW failed on /mnt/a: EIO\n<4>hv-vssd: transport lost\n"
        );
    }

    #[test]
    fn each_kind_is_rate_limited_and_the_next_line_counts_the_suppressed() {
        let (_dir, path) = fifo();
        let mut r = reader(&path);
        let (mut k, _) = Kmsg::open(&path);
        let t0 = Instant::now();
        assert!(k.urgent(Urgent::GuardianDied, t0, "one"));
        for i in 1..=3 {
            assert!(!k.urgent(Urgent::GuardianDied, t0 + Duration::from_secs(i), "again"));
        }
        // Another kind is not held back by the first.
        assert!(k.urgent(Urgent::FreezeDeadline, t0, "deadline"));
        assert!(k.urgent(Urgent::GuardianDied, t0 + KMSG_INTERVAL, "two"));
        assert_eq!(
            read_all(&mut r),
            "<4>hv-vssd: one\n<3>hv-vssd: deadline\n<4>hv-vssd: two (3 similar lines suppressed)\n"
        );
    }

    /// A reader that never reads (a stuck kernel log, in effect): the write fails with
    /// EAGAIN instead of blocking the main loop.
    #[test]
    fn a_full_sink_never_blocks() {
        let (_dir, path) = fifo();
        let _r = reader(&path);
        let (mut k, _) = Kmsg::open(&path);
        let text = "x".repeat(MAX_TEXT);
        // Panics if the loop blocks.
        let written = hv_vss_testutil::run_with_timeout(Duration::from_secs(20), move || {
            let t0 = Instant::now();
            // 64 KiB pipe buffer, ~400 bytes a line: well past full.
            (0..1000u32)
                .filter(|i| k.urgent(Urgent::ThawFailing, t0 + KMSG_INTERVAL * *i, &text))
                .count()
        });
        assert_eq!(written, 1000);
    }

    #[test]
    fn an_unopenable_path_writes_nothing_and_says_why() {
        let (mut k, err) = Kmsg::open(Path::new("/nonexistent/hv-vss-kmsg"));
        assert_eq!(err, Some(rustix::io::Errno::NOENT));
        assert!(!k.is_open());
        assert!(!k.urgent(Urgent::ExitingFrozen, Instant::now(), "x"));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT);
        let line = format_line(Urgent::ThawFailing, &text, 0);
        assert!(line.len() <= MAX_TEXT + "<3>hv-vssd: \n".len());
        assert!(line.ends_with("é\n"), "{line}");
    }
}
