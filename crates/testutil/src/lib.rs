//! Test helpers for hv-vss: real filesystems on loop devices that tests create, freeze and
//! always clean up; a "write blocks while frozen" probe; a timeout runner; root checks.
//!
//! # Safety rules these helpers enforce
//!
//! - Only images the test created, in a temp dir, are ever mounted or frozen.
//! - Loop devices are found with `losetup --find --show`, never by number.
//! - Every [`LoopFs`] is registered; dropping any of them (also while unwinding from a
//!   panic), or a [`run_with_timeout`] expiring, first thaws **every** registered test
//!   filesystem in creation order (a filesystem holding another's image was created first,
//!   and must be thawed first so the upper one's thaw can write through), ignoring EINVAL,
//!   then unmounts (lazily if busy) and detaches the loop device.
//! - A test process ended by SIGTERM, SIGINT or SIGHUP releases every registered test
//!   filesystem first (a signal thread, from the first one on); only SIGKILL leaves them.
//!
//! # Sizes
//!
//! mkfs.xfs (xfsprogs >= 5.19) refuses filesystems under 300 MB; btrfs needs about 114 MiB.
//! [`FsKind::min_size_mib`] gives sizes that work; images are sparse files.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};

pub mod app_server;
pub mod bench;
pub mod fake_vmbus;
pub mod private_ns;
pub mod stock_daemon;
pub mod vssd;

pub use private_ns::{in_private_mount_namespace, mount_tmpfs, unmount};

/// A listening `SOCK_SEQPACKET` Unix socket bound at `path`: the far end of a device or
/// simulator socket in a test.
pub fn seqpacket_listener(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&listener, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&listener, 4)?;
    Ok(listener)
}

/// Is this process root (tests that freeze or mount need it)?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Print why a root-only test is skipped and return `true` when not root:
/// `if hv_vss_testutil::skip_unless_root("freeze test") { return; }`.
pub fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped {what}: needs root (mounting loop devices and FIFREEZE)");
    true
}

/// Return early from a test when not root, printing the reason.
#[macro_export]
macro_rules! require_root {
    () => {
        if $crate::skip_unless_root(module_path!()) {
            return;
        }
    };
}

/// A filesystem type the helpers can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext4 (mkfs.ext4).
    Ext4,
    /// xfs (mkfs.xfs; 300 MB minimum).
    Xfs,
    /// btrfs (mkfs.btrfs).
    Btrfs,
}

impl FsKind {
    /// Smallest image size (MiB) mkfs accepts, rounded up to a safe value.
    pub fn min_size_mib(self) -> u64 {
        match self {
            Self::Ext4 => 32,
            Self::Xfs => 320,
            Self::Btrfs => 128,
        }
    }

    /// The type name as in mountinfo.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
        }
    }

    fn mkfs(self, image: &Path) -> Command {
        let mut cmd = match self {
            Self::Ext4 => {
                let mut c = Command::new("mkfs.ext4");
                c.args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
                c
            }
            Self::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.args(["-q", "-f"]);
                c
            }
            Self::Btrfs => {
                let mut c = Command::new("mkfs.btrfs");
                c.args(["-q", "-f"]);
                c
            }
        };
        cmd.arg(image);
        cmd
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A live test filesystem: what it takes to thaw, unmount and detach it without its guard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mounted {
    mount_point: PathBuf,
    loop_device: PathBuf,
}

/// Live test filesystems, in creation order: the one record of what is mounted. A guard
/// unmounts only what is still listed here, so a filesystem released without its guard
/// ([`release_all_test_filesystems`]) is not unmounted twice.
static REGISTRY: Mutex<Vec<Mounted>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Mounted>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lists a new test filesystem, and makes sure a termination signal releases it.
fn register(m: Mounted) {
    release_on_termination_signals();
    registry().push(m);
}

/// A test process ended by SIGTERM, SIGINT or SIGHUP (an outer `timeout`, a cancelled CI
/// job, Ctrl-C) runs no Drop: without this, its loop filesystems stay mounted, possibly
/// frozen. From the first registered filesystem on, a thread waits for those signals,
/// releases every test filesystem ([`release_all_test_filesystems`]), then ends the process
/// as the signal would have (its default action, re-raised). SIGKILL cannot be caught.
fn release_on_termination_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("hv-vss-testutil: cannot watch termination signals: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("testutil-release-on-signal".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    release_all_test_filesystems();
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    std::process::exit(128 + signal);
                }
            });
        if let Err(e) = spawned {
            eprintln!("hv-vss-testutil: cannot start the signal thread: {e}");
        }
    });
}

/// Unmounts (lazily if still busy after a second) and detaches the loop device. `Ok(true)`:
/// unmounted for real; `Ok(false)`: only detached from the tree (lazy).
fn unmount_and_detach(m: &Mounted) -> anyhow::Result<bool> {
    let mut result = Ok(false);
    let mut unmounted = false;
    for _ in 0..20 {
        if run(Command::new("umount").arg(&m.mount_point)).is_ok() {
            unmounted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if unmounted {
        result = Ok(true);
    } else if let Err(e) = run(Command::new("umount").arg("-l").arg(&m.mount_point)) {
        result = Err(e);
    }
    let _ = run(Command::new("losetup").arg("-d").arg(&m.loop_device));
    result
}

/// Thaws, unmounts and detaches every test filesystem still registered, newest first (a
/// stacked one before the one holding its image), without their guards: for a test body
/// that never returned, whose guards will never be dropped (the process ends with its
/// thread still blocked). Their guards, if ever dropped, then find nothing to do.
pub fn release_all_test_filesystems() {
    thaw_all_test_filesystems();
    let all: Vec<Mounted> = std::mem::take(&mut *registry());
    for m in all.iter().rev() {
        if let Err(e) = unmount_and_detach(m) {
            eprintln!(
                "hv-vss-testutil: releasing {}: {e:#}",
                m.mount_point.display()
            );
        }
    }
}

/// FITHAW on the filesystem at `path`. `Ok(true)`: it was frozen and is thawed now;
/// `Ok(false)`: it was not frozen (EINVAL).
pub fn thaw_path(path: &Path) -> anyhow::Result<bool> {
    let fd = hv_vss_sys::fs::open_mount_point(path)
        .with_context(|| format!("open {}", path.display()))?;
    match hv_vss_sys::fs::thaw(fd.as_fd()) {
        Ok(()) => Ok(true),
        Err(hv_vss_sys::fs::ThawError::NotFrozen) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("FITHAW {}", path.display())),
    }
}

/// FIFREEZE on the filesystem at `path`, from this process (tests use it to prepare state;
/// a [`LoopFs`] guard thaws it on drop).
pub fn freeze_path(path: &Path) -> anyhow::Result<()> {
    let fd = hv_vss_sys::fs::open_mount_point(path)
        .with_context(|| format!("open {}", path.display()))?;
    hv_vss_sys::fs::freeze(fd.as_fd()).with_context(|| format!("FIFREEZE {}", path.display()))
}

/// Freeze `path` from **another process** (`fsfreeze -f`), which then exits: a foreign
/// freeze, as a backup agent would leave it.
pub fn freeze_from_other_process(path: &Path) -> anyhow::Result<()> {
    run(Command::new("fsfreeze").arg("-f").arg(path)).map(drop)
}

/// Thaw every registered test filesystem (creation order), ignoring "not frozen".
pub fn thaw_all_test_filesystems() {
    let paths: Vec<PathBuf> = registry().iter().map(|m| m.mount_point.clone()).collect();
    for p in paths {
        let _ = thaw_path(&p);
    }
}

/// A filesystem image loop-mounted in a temp dir; thawed, unmounted and detached on drop.
#[derive(Debug)]
pub struct LoopFs {
    kind: FsKind,
    image: PathBuf,
    loop_device: PathBuf,
    mount_point: PathBuf,
    // The directory holding the mount point (and the image, unless placed elsewhere).
    dir: Option<tempfile::TempDir>,
    mounted: bool,
}

impl LoopFs {
    /// A fresh `kind` filesystem of its minimum size, image and mount point in a new temp dir.
    pub fn new(kind: FsKind) -> anyhow::Result<Self> {
        Self::create(kind, kind.min_size_mib(), None)
    }

    /// Like [`LoopFs::new`] with the image file created in `image_dir` (for example another
    /// test filesystem's mount point, to stack loop filesystems).
    pub fn new_in(kind: FsKind, image_dir: &Path) -> anyhow::Result<Self> {
        Self::create(kind, kind.min_size_mib(), Some(image_dir))
    }

    /// Full control: size in MiB (at least [`FsKind::min_size_mib`]) and image directory.
    pub fn create(kind: FsKind, size_mib: u64, image_dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hv-vss-loopfs-")
            .tempdir()?;
        let image_dir = image_dir.map_or_else(|| dir.path().to_path_buf(), Path::to_path_buf);
        let image = tempfile::Builder::new()
            .prefix(&format!("{}-", kind.name()))
            .suffix(".img")
            .tempfile_in(&image_dir)?
            .into_temp_path()
            .keep()?;
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point)?;
        let mut fs = Self {
            kind,
            image,
            loop_device: PathBuf::new(),
            mount_point,
            dir: Some(dir),
            mounted: false,
        };
        let file = std::fs::OpenOptions::new().write(true).open(&fs.image)?;
        file.set_len(size_mib.max(kind.min_size_mib()) * 1024 * 1024)?;
        drop(file);
        run(&mut kind.mkfs(&fs.image))?;
        fs.loop_device = PathBuf::from(run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&fs.image))?);
        run(Command::new("mount")
            .arg(&fs.loop_device)
            .arg(&fs.mount_point))?;
        fs.mounted = true;
        register(Mounted {
            mount_point: fs.mount_point.clone(),
            loop_device: fs.loop_device.clone(),
        });
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The loop device (`/dev/loopN`).
    pub fn loop_device(&self) -> &Path {
        &self.loop_device
    }

    /// Its type.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// `st_dev` of the mount point (`major:minor`).
    pub fn dev(&self) -> anyhow::Result<hv_vss_sys::fs::DevNum> {
        Ok(hv_vss_sys::fs::stat_path(&self.mount_point)?.0)
    }

    /// Start a [`WriteProbe::start_synced`] on a new file (unique in this process) at the
    /// root of the filesystem: it blocks while the filesystem is frozen.
    pub fn write_probe(&self) -> WriteProbe {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let file = self
            .mount_point
            .join(format!("probe-{}-{n}", std::process::id()));
        WriteProbe::start_synced(&file, b"probe")
    }

    /// Does a new [`LoopFs::write_probe`] succeed within `timeout`? `false`: it is still
    /// blocked (frozen); a failed write panics.
    pub fn writable_within(&self, timeout: Duration) -> bool {
        self.write_probe().wait_ok(timeout)
    }

    /// Is it frozen? Probes with FIFREEZE+FITHAW is not allowed (it would change state), so
    /// this tries FITHAW and, if that thawed it, freezes it again: use only in tests that
    /// own the filesystem and have nothing else running on it.
    pub fn is_frozen(&self) -> anyhow::Result<bool> {
        if thaw_path(&self.mount_point)? {
            freeze_path(&self.mount_point)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Unmount now (thawing every test filesystem first), reporting errors.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> anyhow::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        thaw_all_test_filesystems();
        self.mounted = false;
        let listed = {
            let mut reg = registry();
            let before = reg.len();
            reg.retain(|m| m.mount_point != self.mount_point);
            reg.len() != before
        };
        // Not listed: already released without this guard (lazily unmounted).
        let (unmounted, result) = if listed {
            let done = unmount_and_detach(&Mounted {
                mount_point: self.mount_point.clone(),
                loop_device: self.loop_device.clone(),
            });
            (matches!(done, Ok(true)), done.map(|_| ()))
        } else {
            (false, Ok(()))
        };
        let _ = std::fs::remove_file(&self.image);
        if let Some(dir) = self.dir.take()
            && unmounted
        {
            let _ = dir.close();
        } else if let Some(dir) = self.dir.take() {
            // Lazily unmounted: leave the directory rather than delete through a mount.
            let _ = dir.keep();
        }
        result
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!(
                "hv-vss-testutil: cleanup of {}: {e:#}",
                self.mount_point.display()
            );
        }
    }
}

/// A filesystem whose FIFREEZE blocks until the test lets it go, and whose `syncfs` blocks
/// too once it has dirty data: an ext4 image on a second ext4 loop filesystem that the test
/// freezes itself ([`SlowFreezeFs::hold`]). The inner filesystem's writes to its loop
/// device become writes to a file on the frozen outer one, which wait for its thaw.
/// (Device-mapper's delay target is not available everywhere; this needs only loop.) Both
/// are test filesystems: dropped (thawed, unmounted) inner first.
#[derive(Debug)]
pub struct SlowFreezeFs {
    /// The filesystem to freeze (its image lives on `outer`).
    pub inner: LoopFs,
    /// The filesystem the test holds frozen.
    pub outer: LoopFs,
}

impl SlowFreezeFs {
    /// Both filesystems, nothing frozen.
    pub fn new() -> anyhow::Result<Self> {
        let outer = LoopFs::create(FsKind::Ext4, FsKind::Ext4.min_size_mib() * 2 + 16, None)?;
        let inner = LoopFs::new_in(FsKind::Ext4, outer.mount_point())?;
        Ok(Self { inner, outer })
    }

    /// Flushes the inner filesystem (so its `syncfs` has nothing to write), then freezes
    /// the outer one: from now on the inner's FIFREEZE blocks until [`Self::release`].
    pub fn hold(&self) -> anyhow::Result<()> {
        let fd = hv_vss_sys::fs::open_mount_point(self.inner.mount_point())?;
        hv_vss_sys::fs::syncfs(fd.as_fd())?;
        freeze_path(self.outer.mount_point())
    }

    /// Leaves `bytes` of dirty data on the inner filesystem (not synced): once held, its
    /// `syncfs` blocks too.
    pub fn dirty_inner(&self, bytes: usize) -> anyhow::Result<()> {
        std::fs::write(self.inner.mount_point().join("dirty"), vec![0x5a; bytes])?;
        Ok(())
    }

    /// Thaws the outer filesystem; the inner's blocked calls go on.
    pub fn release(&self) -> anyhow::Result<bool> {
        thaw_path(self.outer.mount_point())
    }
}

/// Some other mount (tmpfs, bind) in a temp dir, unmounted on drop.
#[derive(Debug)]
pub struct TestMount {
    mount_point: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl TestMount {
    /// A small tmpfs in a new temp dir.
    pub fn tmpfs() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("hv-vss-tmpfs-").tempdir()?;
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "hv-vss-test"])
            .arg(&mount_point))?;
        Ok(Self {
            mount_point,
            _dir: Some(dir),
        })
    }

    /// Bind-mount `source` (a directory) at a new temp dir.
    pub fn bind(source: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("hv-vss-bind-").tempdir()?;
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point)?;
        run(Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(&mount_point))?;
        Ok(Self {
            mount_point,
            _dir: Some(dir),
        })
    }

    /// Bind-mount `source` read-only (`mount --bind -o ro`) at a new temp dir directly under
    /// `/tmp`, so its path is shorter than a [`LoopFs`] mount point's (the plan once chose
    /// the shortest mount point of a filesystem).
    pub fn bind_read_only(source: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ro").tempdir_in("/tmp")?;
        let mount_point = dir.path().to_path_buf();
        run(Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(source)
            .arg(&mount_point))?;
        Ok(Self {
            mount_point,
            _dir: Some(dir),
        })
    }

    /// Where it is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(&self.mount_point)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.mount_point));
        }
    }
}

/// A buffered write on another thread, to show whether writes block (frozen) or complete.
#[derive(Debug)]
pub struct WriteProbe {
    done: Arc<AtomicBool>,
    result: Arc<Mutex<Option<std::io::Result<()>>>>,
}

impl WriteProbe {
    /// Start writing `bytes` to `file` (created or appended) on a new thread.
    pub fn start(file: &Path, bytes: &[u8]) -> Self {
        Self::spawn(file, bytes, false)
    }

    /// Like [`WriteProbe::start`], then `fsync` the file: the probe is done only once the
    /// data reached the filesystem's device, so "done after thaw" also proves the thawed
    /// filesystem accepts writeback, not just a page-cache write.
    pub fn start_synced(file: &Path, bytes: &[u8]) -> Self {
        Self::spawn(file, bytes, true)
    }

    fn spawn(file: &Path, bytes: &[u8], sync: bool) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(None));
        let (file, bytes) = (file.to_path_buf(), bytes.to_vec());
        let (d, r) = (done.clone(), result.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let res = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .and_then(|mut f| {
                    f.write_all(&bytes)?;
                    if sync { f.sync_all() } else { Ok(()) }
                });
            *r.lock().unwrap_or_else(|p| p.into_inner()) = Some(res);
            d.store(true, Ordering::SeqCst);
        });
        Self { done, result }
    }

    /// Has the write returned?
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Wait up to `timeout` for the write to return; `true` if it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.is_done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.is_done()
    }

    /// Like [`WriteProbe::wait`], but a write that returned an error panics with that error:
    /// `true` means the write really succeeded within `timeout`, `false` that it is still
    /// blocked.
    pub fn wait_ok(&self, timeout: Duration) -> bool {
        if !self.wait(timeout) {
            return false;
        }
        if let Some(Err(e)) = self.result() {
            panic!("probe write failed: {e}");
        }
        true
    }

    /// The write's result, once done.
    pub fn result(&self) -> Option<Result<(), String>> {
        self.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.as_ref().map(|_| ()).map_err(ToString::to_string))
    }
}

/// How long a timed-out body gets to finish once the test filesystems are thawed.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// Run `body` on a thread; if it does not finish within `timeout`, thaw every registered
/// test filesystem (so a blocked body can finish and its guards clean up), wait up to
/// [`TIMEOUT_GRACE`] more, then panic; a body still blocked then has its filesystems
/// released without its guards ([`release_all_test_filesystems`]). A panic in `body` is
/// propagated (its guards were dropped while it unwound).
pub fn run_with_timeout<T: Send + 'static>(
    timeout: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    run_with_timeout_and_cleanup(timeout, || {}, body)
}

/// Like [`run_with_timeout`], with `on_timeout` run first when time is up, before the test
/// filesystems are thawed: for example to kill child processes the test started, which
/// could otherwise freeze them again.
pub fn run_with_timeout_and_cleanup<T: Send + 'static>(
    timeout: Duration,
    on_timeout: impl FnOnce(),
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(timeout).is_err() {
        on_timeout();
        thaw_all_test_filesystems();
        if rx.recv_timeout(TIMEOUT_GRACE).is_err() {
            // Still blocked: its guards will never be dropped (the thread outlives the
            // test and dies with the process), so release their filesystems here.
            release_all_test_filesystems();
            panic!(
                "test body did not finish within {timeout:?}, nor {TIMEOUT_GRACE:?} after its filesystems were thawed; they were unmounted"
            );
        }
        panic!("test body did not finish within {timeout:?}; test filesystems were thawed");
    }
    match handle.join() {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) | Err(panic) => std::panic::resume_unwind(panic),
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialise freezing tests within one test binary: a guard's drop thaws every registered
/// test filesystem, which would disturb another test that froze one on purpose. Take this
/// first in every test that freezes: `let _serial = hv_vss_testutil::serial();`.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The frame of a test that freezes filesystems: skipped with a message unless root, then
/// serialised with the other freezing tests of its binary ([`serial`]), then `body` run
/// under [`run_with_timeout`] (on expiry every test filesystem is thawed and the test
/// fails). A panic in `body` fails the test.
///
/// ```ignore
/// #[test]
/// fn a_write_blocks_while_frozen() {
///     hv_vss_testutil::freezing_test(TIMEOUT, || { /* LoopFs::new, freeze, assert */ });
/// }
/// ```
pub fn freezing_test(timeout: Duration, body: impl FnOnce() + Send + 'static) {
    // libtest names each test's thread after the test.
    let name = std::thread::current()
        .name()
        .map_or_else(|| "freeze test".to_owned(), str::to_owned);
    if skip_unless_root(&name) {
        return;
    }
    let _serial = serial();
    run_with_timeout(timeout, body);
}

/// A unique temp dir for a state directory (journal, lock), on the root filesystem, which
/// tests never freeze.
pub fn state_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("hv-vss-state-").tempdir()?)
}

/// A unique temp dir on tmpfs (`/dev/shm`), as a daemon's state directory should be (the
/// daemon refuses one on a filesystem it may freeze), also for files that must stay
/// writable while test filesystems are frozen.
pub fn tmpfs_state_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("hv-vss-state-")
        .tempdir_in("/dev/shm")
        .context("temp dir in /dev/shm")
}

/// A cloneable [`std::io::Write`] that keeps every byte written to it: hand one clone to a
/// logger (a `tracing` writer, a log gate) and read back through another what it wrote.
#[derive(Debug, Clone, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Everything written so far, as text; panics if it is not UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.bytes()).expect("written text is UTF-8")
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An example TOML file (dist/hv-vss.toml) with every commented-out `# key = value` and
/// `# [table]` line uncommented; prose comments stay. A key line is `# ` then a key of
/// lowercase letters and `_`, then ` = `.
pub fn uncomment_toml_example(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
