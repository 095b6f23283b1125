//! The stock Linux VSS daemon's request loop (tools/hv/hv_vss_daemon.c), as a baseline for
//! benchmarks that drive `hv-vssd` through the kernel emulator: the same device ABI, the
//! same request and answer per operation, so a comparison includes the round trip on both
//! sides. Reproduced from its documented behaviour, not its code:
//!
//! - Open the device (here: connect to the emulator's `SOCK_SEQPACKET` socket), write
//!   REGISTER1, read the kernel's 4-byte handshake reply.
//! - Loop: `poll` the device, `read` one 12-byte request, act, `write` the 12-byte reply
//!   with the status in bytes 0–3.
//! - FREEZE and THAW: read the mount table (`/proc/mounts`, as its `setmntent` does) and,
//!   for each entry in mount order, open the mount point read-only, FIFREEZE (FITHAW), close.
//!   EBUSY from FIFREEZE and EINVAL from FITHAW count as success (a filesystem mounted
//!   twice). A failed FREEZE thaws again and answers E_FAIL.
//! - HOT_BACKUP: nothing but the answer S_OK (it only sets a flag); any other operation
//!   also S_OK.
//!
//! Differences, all of which make this baseline faster than the real one, never slower:
//! the stock daemon freezes every `/dev/*` mount that is not read-only, vfat, a loop device
//! or `/` (then `/` last), and calls `syslog` after every operation; this one freezes only
//! the mount points it is given (loop filesystems a benchmark created) and logs nothing.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hv_vss_protocol::kernel::{
    HANDSHAKE_REPLY_LEN, KERNEL_MSG_LEN, build_reply, parse_handshake_reply, parse_request,
    register1_message,
};
use hv_vss_protocol::{HvStatus, VssOperation};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Connects to the device at `socket`, registers, and serves requests for `mounts` until
/// the device hangs up (Ok) or an I/O error (Err).
pub fn serve(socket: &Path, mounts: &[PathBuf]) -> anyhow::Result<()> {
    let dev = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&dev, &SocketAddrUnix::new(socket)?)
        .with_context(|| format!("connect {}", socket.display()))?;
    rustix::io::write(&dev, &register1_message())?;
    let mut handshake = [0u8; HANDSHAKE_REPLY_LEN + 1];
    let n = read_message(&dev, &mut handshake)?;
    parse_handshake_reply(&handshake[..n])?;
    loop {
        let mut buf = [0u8; KERNEL_MSG_LEN + 1];
        let n = read_message(&dev, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let op = parse_request(&buf[..n])?.op;
        let status = match op {
            VssOperation::FREEZE => match operate(mounts, Op::Freeze) {
                Ok(()) => HvStatus::S_OK,
                Err(_) => {
                    let _ = operate(mounts, Op::Thaw);
                    HvStatus::E_FAIL
                }
            },
            VssOperation::THAW => match operate(mounts, Op::Thaw) {
                Ok(()) => HvStatus::S_OK,
                Err(_) => HvStatus::E_FAIL,
            },
            _ => HvStatus::S_OK,
        };
        rustix::io::write(&dev, &build_reply(status))?;
    }
}

/// `poll` then `read`, as the stock loop does; 0 at hang-up.
fn read_message(dev: &OwnedFd, buf: &mut [u8]) -> anyhow::Result<usize> {
    let fds = &mut [PollFd::new(dev, PollFlags::IN)];
    loop {
        match rustix::event::poll(fds, None) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("poll on the device"),
        }
    }
    match rustix::io::read(dev, buf) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::CONNRESET) => Ok(0),
        Err(e) => Err(e).context("read from the device"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Freeze,
    Thaw,
}

/// One pass over the mount table in mount order, for the entries that are in `mounts`.
fn operate(mounts: &[PathBuf], op: Op) -> anyhow::Result<()> {
    let mut table = String::new();
    std::fs::File::open("/proc/mounts")?.read_to_string(&mut table)?;
    let mut failed = false;
    let mut found = 0;
    for dir in table.lines().filter_map(|l| l.split(' ').nth(1)) {
        let dir = PathBuf::from(unescape(dir));
        if !mounts.contains(&dir) {
            continue;
        }
        found += 1;
        if do_freeze(&dir, op).is_err() {
            failed = true;
            if op == Op::Freeze {
                break;
            }
        }
    }
    // (The stock daemon cannot miss a mount; a baseline that froze nothing would.)
    if found < mounts.len() {
        bail!(
            "{} of the {} mount points are not in /proc/mounts",
            mounts.len() - found,
            mounts.len()
        );
    }
    if failed {
        bail!(
            "{} failed",
            if op == Op::Freeze {
                "FIFREEZE"
            } else {
                "FITHAW"
            }
        );
    }
    Ok(())
}

/// `vss_do_freeze`: open read-only, the ioctl, close; EBUSY / EINVAL count as done.
fn do_freeze(dir: &Path, op: Op) -> anyhow::Result<()> {
    let file = std::fs::File::open(dir)?;
    match op {
        Op::Freeze => match hv_vss_sys::fs::freeze(file.as_fd()) {
            Ok(()) | Err(hv_vss_sys::fs::FreezeError::AlreadyFrozen) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Op::Thaw => match hv_vss_sys::fs::thaw(file.as_fd()) {
            Ok(()) | Err(hv_vss_sys::fs::ThawError::NotFrozen) => Ok(()),
            Err(e) => Err(e.into()),
        },
    }
}

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/short\04"), r"/short\04");
    }

    /// One request as the kernel sends it; the daemon's status.
    fn request(dev: &OwnedFd, op: VssOperation) -> HvStatus {
        rustix::io::write(dev, &hv_vss_protocol::kernel::build_request(op)).unwrap();
        let mut buf = [0u8; KERNEL_MSG_LEN];
        assert_eq!(rustix::io::read(dev, &mut buf).unwrap(), KERNEL_MSG_LEN);
        hv_vss_protocol::kernel::parse_daemon_reply(&buf).unwrap()
    }

    /// Registers like the stock daemon, then freezes at FREEZE and thaws at THAW exactly the
    /// filesystem it was given, answering S_OK to each request, and ends at hang-up.
    #[test]
    fn registers_then_freezes_and_thaws_the_given_filesystem() {
        crate::freezing_test(Duration::from_secs(60), || {
            let fs = crate::LoopFs::new(crate::FsKind::Ext4).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("dev.sock");
            let listener = crate::seqpacket_listener(&path).unwrap();
            let mounts = vec![fs.mount_point().to_path_buf()];
            let daemon = std::thread::spawn(move || serve(&path, &mounts));
            let dev = rustix::net::accept(&listener).unwrap();
            let mut buf = [0u8; KERNEL_MSG_LEN];
            assert_eq!(rustix::io::read(&dev, &mut buf).unwrap(), KERNEL_MSG_LEN);
            assert_eq!(buf, register1_message());
            rustix::io::write(&dev, &129u32.to_le_bytes()).unwrap();

            assert_eq!(request(&dev, VssOperation::HOT_BACKUP), HvStatus::S_OK);
            assert!(!fs.is_frozen().unwrap());
            assert_eq!(request(&dev, VssOperation::FREEZE), HvStatus::S_OK);
            assert!(fs.is_frozen().unwrap());
            assert_eq!(request(&dev, VssOperation::THAW), HvStatus::S_OK);
            assert!(fs.writable_within(Duration::from_secs(5)));
            drop(dev);
            daemon.join().unwrap().unwrap();
        });
    }
}
