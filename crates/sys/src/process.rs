//! Processes: child setup that needs code between `fork` and `exec` (a new session, no
//! inherited descriptors beyond stdin, stdout and stderr), and whether and when another
//! process has exited.
//!
//! # Kernel contract
//!
//! - `setsid()` in a child that is not a process-group leader makes it the leader of a new
//!   session and of a new process group whose id is its pid, with no controlling terminal.
//!   `kill(-pid, sig)` then reaches it and every descendant that did not move itself to
//!   another group. It fails with `EPERM` only for a group leader, which a freshly forked
//!   child is not (as long as no `process_group` is also set on the `Command`).
//! - `close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)` (Linux 5.11) marks every descriptor from 3 up
//!   close-on-exec in one call, so a descriptor the parent opened without `O_CLOEXEC`
//!   (inherited from its own parent, or opened by foreign code) does not leak through
//!   `execve`. Marking rather than closing keeps std's own exec-error pipe working. Older
//!   kernels answer `ENOSYS` or `EINVAL`; that is ignored, since std and rustix open every
//!   descriptor with `O_CLOEXEC` anyway. FreeBSD has the same call with the same flag
//!   (13.1 and later).
//! - `kill(pid, 0)` tells whether a process exists (`ESRCH`: it does not; `EPERM`: it does,
//!   and belongs to someone else).
//! - Waiting for another process's exit without polling: Linux's `pidfd_open(2)` gives an
//!   fd that polls readable when the process exits; FreeBSD's `kqueue` `EVFILT_PROC` with
//!   `NOTE_EXIT` reports it. Either holds on to that one process, so a reused pid cannot
//!   fool the wait.
//!
//! `setsid` and `close_range` run in the forked child of a possibly multi-threaded parent,
//! where only async-signal-safe operations are allowed: each is one raw syscall, with no
//! allocation and no lock.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::io::Errno;

/// Make `cmd`'s child a new session leader (`setsid(2)`) and mark all its descriptors from 3
/// up close-on-exec (`close_range(2)` with `CLOSE_RANGE_CLOEXEC`) before `execve`.
///
/// Do not combine with `CommandExt::process_group`: a group leader cannot `setsid`, and the
/// spawn would fail with `EPERM`.
#[doc(alias = "setsid")]
#[doc(alias = "close_range")]
pub fn detach_on_spawn(cmd: &mut Command) {
    let in_child = || -> io::Result<()> {
        rustix::process::setsid()
            .map_err(|errno| io::Error::from_raw_os_error(errno.raw_os_error()))?;
        crate::platform::process::mark_inherited_fds_cloexec();
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec. It makes two raw syscalls
    // (setsid, close_range) and builds an io::Error from an errno, which does not allocate;
    // it takes no lock, touches no shared state, and so is async-signal-safe as pre_exec
    // requires.
    unsafe {
        cmd.pre_exec(in_child);
    }
}

/// Is a process with this pid alive (`kill(pid, 0)`; `EPERM` counts as alive)?
pub fn process_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// A descriptor that polls readable (`POLLIN`) once process `pid` has exited: a pidfd on
/// Linux, a kqueue watching `EVFILT_PROC`/`NOTE_EXIT` on FreeBSD. It holds on to that one
/// process, so a reused pid cannot fool it. `ESRCH`: no such process now (it is gone, or
/// on FreeBSD possibly an unreaped zombie); `ENOSYS` and others: the platform cannot watch
/// (Linux before 5.3); poll [`process_alive`] then.
pub fn exit_watch(pid: rustix::process::Pid) -> Result<std::os::fd::OwnedFd, Errno> {
    crate::platform::process::exit_watch(pid)
}

/// Waits until process `pid` has exited, at most `timeout`: `true` if it is gone. Waits on
/// an [`exit_watch`], so no pid reuse can fool it while waiting; falls back to polling
/// [`process_alive`] where the platform has none. A process stuck in an uninterruptible
/// call (FIFREEZE) exits only when that call returns: the wait is what bounds it.
pub fn wait_for_exit(pid: i32, timeout: std::time::Duration) -> bool {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    let deadline = std::time::Instant::now() + timeout;
    let watch = match exit_watch(raw) {
        Ok(watch) => watch,
        Err(Errno::SRCH) => return true,
        Err(_) => return poll_until_gone(pid, deadline),
    };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match crate::poll::poll_readable(std::os::fd::AsFd::as_fd(&watch), Some(left)) {
        Ok(crate::poll::Readable::Yes) => true,
        Ok(_) | Err(_) => !process_alive(pid),
    }
}

/// The fallback of [`wait_for_exit`]: [`process_alive`] every 50 ms until `deadline`.
fn poll_until_gone(pid: i32, deadline: std::time::Instant) -> bool {
    while process_alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn wait_for_exit_sees_a_child_end_and_times_out_on_a_live_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!wait_for_exit(pid, std::time::Duration::from_millis(50)));
        assert!(wait_for_exit(pid, std::time::Duration::from_secs(10)));
        child.wait().unwrap();
        assert!(
            wait_for_exit(pid, std::time::Duration::ZERO),
            "reaped: gone"
        );
    }

    #[test]
    fn process_alive_sees_self_and_not_a_reaped_child() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert!(!process_alive(0));
    }

    #[test]
    fn child_is_a_session_leader() {
        // Field 6 of /proc/PID/stat is the session id.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cut -d' ' -f6 /proc/$$/stat; echo $$"]);
        detach_on_spawn(&mut cmd);
        let out = cmd.output().expect("spawn sh");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let sid = lines.next().unwrap();
        let pid = lines.next().unwrap();
        assert_eq!(sid, pid, "the child leads its own session");
        // Our own session id from /proc, not getsid(2): in a container whose session leader
        // lives outside our pid namespace the kernel reports 0, which rustix's getsid
        // refuses with a panic. The comm field may hold spaces, so count after the last ')'.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let own_sid = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(3)
            .unwrap()
            .to_string();
        assert_ne!(sid, own_sid);
    }

    #[test]
    fn non_cloexec_descriptor_does_not_leak() {
        let file = std::fs::File::open("/dev/null").unwrap();
        rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).unwrap();
        let fd = file.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("test -e /proc/self/fd/{fd} && echo leaked || echo closed"),
        ]);
        detach_on_spawn(&mut cmd);
        let out = cmd.output().expect("spawn sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
        // Without the helper the same descriptor does leak: the test can tell.
        let out = Command::new("sh")
            .args([
                "-c",
                &format!("test -e /proc/self/fd/{fd} && echo leaked || echo closed"),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "leaked");
    }
}
