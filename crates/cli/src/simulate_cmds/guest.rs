//! The guest side of a run: the child process (the daemon or the loopback guest), its
//! state directory on tmpfs, and the scratch filesystem with its writer.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hv_vss_sim::host::self_test_guest::{self, FixedPolicy};
use hv_vss_sim::host::{HandoverListener, HostSimulator, connect_handover};
use hv_vss_vmbus::ic_endpoint::IcEndpoint;

use super::writer;
use super::{CONNECT_TIMEOUT, EXIT_TIMEOUT, IMAGE_LEN, SIGTERM_GRACE, TMPFS_MAGIC, WRITER_NOTABLE};

/// Waits for the guest's connection, failing early if the guest exits.
pub(super) fn accept_guest(
    listener: &HandoverListener,
    guest: &mut GuestProcess,
) -> anyhow::Result<OwnedFd> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Some(conn) = listener.accept(Duration::from_millis(100))? {
            return Ok(conn);
        }
        if let Some(status) = guest.child.try_wait()? {
            bail!(
                "the {} exited ({status}) before connecting to the hand-over socket",
                guest.name
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the {} did not connect to the hand-over socket within {CONNECT_TIMEOUT:?}",
                guest.name
            );
        }
    }
}

/// The child serving the guest side, stopped when this command ends.
pub(super) struct GuestProcess {
    pub(super) child: Child,
    pub(super) name: &'static str,
    /// The daemon stops on SIGTERM; the loopback guest when the host hangs up.
    pub(super) stops_on_sigterm: bool,
    pub(super) conn: Option<OwnedFd>,
    /// The host simulator, kept until the guest is stopped: dropping it closes the
    /// interrupt pipe, which the guest reads as a rescind.
    pub(super) host: Option<HostSimulator>,
    pub(super) stopped: bool,
}

/// How the guest process ended.
#[derive(Debug)]
pub(super) struct GuestExit {
    pub(super) name: &'static str,
    pub(super) clean: bool,
    pub(super) description: String,
}

impl GuestProcess {
    pub(super) fn new(child: Child, name: &'static str, stops_on_sigterm: bool) -> Self {
        Self {
            child,
            name,
            stops_on_sigterm,
            conn: None,
            host: None,
            stopped: false,
        }
    }

    /// Stops the guest and waits; kills it after [`EXIT_TIMEOUT`].
    ///
    /// The daemon gets SIGTERM while the hand-over connection is still open, and the
    /// connection is closed only once it has exited: closing first is the simulator's
    /// "rescind", which the daemon rightly reports as a lost transport (a warning) at the
    /// end of every clean run.
    pub(super) fn stop(&mut self) -> anyhow::Result<GuestExit> {
        self.stopped = true;
        if self.stops_on_sigterm {
            self.signal(rustix::process::Signal::TERM);
        } else {
            self.hang_up();
        }
        let started = Instant::now();
        let deadline = started + EXIT_TIMEOUT;
        let exit = loop {
            if self.conn.is_some() && started.elapsed() >= SIGTERM_GRACE {
                // Not gone after SIGTERM (a stand-in that ignores it): hang up too.
                self.hang_up();
            }
            if let Some(status) = self.child.try_wait()? {
                break GuestExit {
                    name: self.name,
                    clean: status.success(),
                    description: format!("exited with {status}"),
                };
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                break GuestExit {
                    name: self.name,
                    clean: false,
                    description: format!("did not exit within {EXIT_TIMEOUT:?}; killed ({status})"),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.hang_up();
        Ok(exit)
    }

    /// The host goes away: the hand-over connection closes and the simulator (its rings
    /// and interrupt pipe) is dropped.
    fn hang_up(&mut self) {
        drop(self.host.take());
        drop(self.conn.take());
    }

    pub(super) fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

/// `--daemon`, or `hv-vssd` next to this executable.
pub(super) fn daemon_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe.with_file_name("hv-vssd");
    if !path.exists() {
        bail!(
            "{} not found; build it (cargo build -p hv-vssd), pass --daemon PATH, or use \
             --guest-loopback for a transport self-test",
            path.display()
        );
    }
    Ok(path)
}

/// Refuses a daemon whose `--help` does not mention `--uio`.
pub(super) fn check_daemon_supports_uio(daemon: &Path) -> anyhow::Result<()> {
    let out = Command::new(daemon)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --help", daemon.display()))?;
    let help = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !help.contains("--uio") {
        bail!(
            "{} does not support --uio yet; use --guest-loopback for a transport self-test",
            daemon.display()
        );
    }
    Ok(())
}

// f_type is i64 on x86_64 glibc but i32 or u32 on other targets.
#[allow(clippy::unnecessary_cast)]
pub(super) fn is_tmpfs_magic(f_type: rustix::fs::FsWord) -> bool {
    f_type as i64 == TMPFS_MAGIC
}

/// A state directory on tmpfs (R59: never on a filesystem that may be frozen).
pub(super) fn tmpfs_state_dir() -> anyhow::Result<tempfile::TempDir> {
    for base in ["/dev/shm", "/run"] {
        let is_tmpfs = rustix::fs::statfs(base)
            .map(|s| is_tmpfs_magic(s.f_type))
            .unwrap_or(false);
        if is_tmpfs
            && let Ok(dir) = tempfile::Builder::new()
                .prefix("hv-vss-simulate-")
                .tempdir_in(base)
        {
            return Ok(dir);
        }
    }
    bail!("no writable tmpfs for the daemon's state directory (tried /dev/shm and /run)")
}

/// A scratch ext4 image, loop-mounted in the work directory, with a writer on it; on drop
/// the writer is stopped, the filesystem thawed (in case), unmounted and deleted.
pub(super) struct ScratchFs {
    pub(super) image: PathBuf,
    pub(super) mount_point: PathBuf,
    pub(super) writer: Option<writer::Writer>,
}

impl ScratchFs {
    pub(super) fn create(work: &Path) -> anyhow::Result<Self> {
        let image = work.join("scratch.ext4");
        let mount_point = work.join("scratch");
        std::fs::create_dir(&mount_point)?;
        let file = std::fs::File::create(&image)?;
        file.set_len(IMAGE_LEN)?;
        drop(file);
        run_tool(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        run_tool(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount_point),
        )?;
        let mut fs = Self {
            image,
            mount_point,
            writer: None,
        };
        std::fs::write(fs.mount_point.join("hello"), "written before the freeze\n")?;
        fs.writer = Some(
            writer::Writer::start(&fs.mount_point.join("writer"), WRITER_NOTABLE)
                .context("starting the writer on the scratch filesystem")?,
        );
        Ok(fs)
    }

    pub(super) fn thaw(&self) {
        // We created this filesystem; if anything left it frozen, thaw it.
        if let Ok(fd) = hv_vss_sys::fs::open_mount_point(&self.mount_point) {
            let _ = hv_vss_sys::fs::thaw(fd.as_fd());
        }
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.request_stop();
        }
        // The writer blocks while frozen: thaw before joining it.
        self.thaw();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let ok = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

pub(super) fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The loopback guest (child process): receive the rings, serve with the fixed policy
/// until the host hangs up.
pub(super) fn run_loopback_guest(socket: &Path) -> anyhow::Result<ExitCode> {
    let (conn, rings) = connect_handover(socket).context("receiving the rings")?;
    let channel = rings.guest().context("mapping the rings")?;
    let mut endpoint = IcEndpoint::new(channel);
    self_test_guest::serve(&mut endpoint, FixedPolicy::ALWAYS_OK, conn.as_fd())
        .context("serving the channel")?;
    Ok(ExitCode::SUCCESS)
}
