//! The client library (`hv_vss_client::run_until`) and `hv-vss app run` against the real
//! hv-vssd (drop-in mode, kernel emulator) on a loop-mounted ext4 the test made: the client
//! is told to freeze while the filesystem is still writable, the filesystem is frozen after
//! the ack, and thawed when the client hears thaw; a daemon restart while holding. Skipped,
//! saying why, unless root and hv-vssd is built next to hv-vss (`cargo test --workspace`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_vss_client::run::CONNECTION_LOST;
use hv_vss_client::{Backoff, Config, Handler, HandlerResult, Registration, Request};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::kernel::{EmulatorConfig, HostOutcome, KernelEmulator};
use hv_vss_testutil::vssd::Vssd;
use hv_vss_testutil::{FsKind, LoopFs};

const TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(15);
const BLOCKED: Duration = Duration::from_millis(400);
const OK: HostOutcome = HostOutcome::Replied(HvStatus::S_OK);

fn hv_vssd() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_hv-vss")).with_file_name("hv-vssd");
    p.exists().then_some(p)
}

/// Runs `body` as a freezing test, or prints why it is skipped.
fn daemon_test(body: impl FnOnce(PathBuf) + Send + 'static) {
    let Some(vssd) = hv_vssd() else {
        eprintln!("skipped: hv-vssd is not built next to hv-vss (cargo build -p hv-vssd)");
        return;
    };
    hv_vss_testutil::freezing_test(TIMEOUT, move || body(vssd));
}

/// A filesystem, a kernel emulator and the daemon freezing only that filesystem.
struct Setup {
    daemon: Option<Vssd>,
    emu: KernelEmulator,
    state: tempfile::TempDir,
    fs: LoopFs,
    binary: PathBuf,
}

impl Setup {
    fn new(binary: PathBuf) -> Self {
        let fs = LoopFs::new(FsKind::Ext4).unwrap();
        let emu = KernelEmulator::start(EmulatorConfig::default()).unwrap();
        let state = hv_vss_testutil::tmpfs_state_dir().unwrap();
        let mut s = Self {
            daemon: None,
            emu,
            state,
            fs,
            binary,
        };
        s.start_daemon();
        s
    }

    fn start_daemon(&mut self) {
        let d = Vssd::start(
            &self.binary,
            self.emu.socket_path(),
            self.state.path(),
            &[self.fs.mount_point()],
        );
        assert!(self.emu.wait_ready(WAIT), "hv-vssd not ready:\n{}", d.log());
        self.daemon = Some(d);
    }

    fn daemon(&mut self) -> &mut Vssd {
        self.daemon.as_mut().unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.state.path().join("app.sock")
    }

    fn request(&self, op: VssOperation) -> HostOutcome {
        self.emu.host_request(op)
    }

    /// Does a write to the filesystem complete now (not frozen)?
    fn writable(&self) -> bool {
        self.fs.writable_within(WAIT)
    }

    fn frozen(&self) -> bool {
        !self.fs.write_probe().wait_ok(BLOCKED)
    }

    fn journal_exists(&self) -> bool {
        self.state.path().join("app-journal.json").exists()
    }

    /// Waits until the daemon logged `name`'s registration.
    fn wait_registered(&mut self, name: &str) -> bool {
        let end = Instant::now() + WAIT;
        let client = format!("client={name} ");
        while Instant::now() < end {
            let log = self.daemon().log();
            if log
                .lines()
                .any(|l| l.contains("application registered") && l.contains(&client))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Records calls; on freeze and thaw it writes a file on the filesystem under backup (the
/// flush an application does, and its first write after the thaw), which must not block.
#[derive(Clone)]
struct Writing {
    dir: PathBuf,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Writing {
    fn write(&self, what: &str) -> HandlerResult {
        let path = self.dir.join(what);
        std::fs::write(&path, what)?;
        std::fs::File::open(&path)?.sync_all()?;
        Ok(())
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn wait_calls(&self, n: usize) -> Vec<String> {
        let end = Instant::now() + WAIT;
        while self.calls().len() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.calls()
    }
}

impl Handler for Writing {
    fn on_freeze(&mut self, r: &Request) -> HandlerResult {
        self.write(&format!("flush-{}", r.txn))?;
        self.calls.lock().unwrap().push(format!("freeze {}", r.txn));
        Ok(())
    }
    fn on_thaw(&mut self, r: &Request) -> HandlerResult {
        self.write(&format!("resume-{}", r.txn))?;
        self.calls.lock().unwrap().push(format!("thaw {}", r.txn));
        Ok(())
    }
    fn on_abort(&mut self, txn: u64, reason: &str) -> HandlerResult {
        self.calls
            .lock()
            .unwrap()
            .push(format!("abort {txn} {reason}"));
        Ok(())
    }
}

fn client_config(socket: &Path, name: &str) -> Config {
    let mut c = Config::new(Registration::new(name).timeout(Duration::from_secs(10)));
    c.socket = socket.to_path_buf();
    c.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    c
}

/// `run_until` on a thread until dropped.
struct Loop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), hv_vss_client::Error>>>,
}

impl Loop {
    fn start(config: Config, handler: &Writing) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, mut h) = (stop.clone(), handler.clone());
        let thread = std::thread::spawn(move || hv_vss_client::run_until(&config, &mut h, &s));
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_client_library_takes_part_in_a_backup_through_hv_vssd() {
    daemon_test(|vssd| {
        let mut s = Setup::new(vssd);
        let handler = Writing {
            dir: s.fs.mount_point().to_path_buf(),
            calls: Arc::default(),
        };
        let _client = Loop::start(client_config(&s.socket(), "lib"), &handler);
        assert!(s.wait_registered("lib"), "{}", s.daemon().log());

        assert_eq!(s.request(VssOperation::HOT_BACKUP), OK);
        assert_eq!(s.request(VssOperation::FREEZE), OK, "{}", s.daemon().log());
        // The handler wrote its flush before the ack: the filesystem was not frozen yet.
        let calls = handler.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let txn = calls[0].strip_prefix("freeze ").unwrap().to_owned();
        assert!(s.fs.mount_point().join(format!("flush-{txn}")).exists());
        assert!(s.frozen(), "frozen after every client acked");

        assert_eq!(s.request(VssOperation::THAW), OK);
        // Told to thaw, the handler wrote at once and its ack was in time.
        assert_eq!(
            handler.wait_calls(2),
            [format!("freeze {txn}"), format!("thaw {txn}")]
        );
        assert!(s.writable());
        assert_eq!(s.daemon().verdicts(2), ["check_passed", "app_consistent"]);
    });
}

#[test]
fn a_client_holding_when_hv_vssd_restarts_releases_at_once_and_is_not_aborted_twice() {
    daemon_test(|vssd| {
        let mut s = Setup::new(vssd);
        let handler = Writing {
            dir: s.fs.mount_point().to_path_buf(),
            calls: Arc::default(),
        };
        let _client = Loop::start(client_config(&s.socket(), "holder"), &handler);
        assert!(s.wait_registered("holder"), "{}", s.daemon().log());
        assert_eq!(s.request(VssOperation::FREEZE), OK);
        let txn = handler.calls()[0]
            .strip_prefix("freeze ")
            .unwrap()
            .to_owned();

        s.daemon().kill();
        // The connection is gone: the loop releases the hold itself.
        assert_eq!(
            handler.wait_calls(2),
            [
                format!("freeze {txn}"),
                format!("abort {txn} {CONNECTION_LOST}")
            ]
        );
        assert!(s.writable(), "the guardian thawed");
        assert!(s.journal_exists(), "the daemon owes the holder an abort");

        s.start_daemon();
        // The client comes back by itself and receives the owed abort: the journal empties.
        let end = Instant::now() + WAIT;
        while s.journal_exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!s.journal_exists(), "{}", s.daemon().log());
        // The daemon's abort for the hold already released is not passed on again, and the
        // client serves the next backup.
        assert_eq!(s.request(VssOperation::FREEZE), OK, "{}", s.daemon().log());
        let calls = handler.wait_calls(3);
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls[2].starts_with("freeze "), "{calls:?}");
        assert_eq!(s.request(VssOperation::THAW), OK);
        assert_eq!(handler.wait_calls(4).len(), 4);
    });
}

// ---- hv-vss app run -----------------------------------------------------------------------

struct AppRun(Child);

impl AppRun {
    fn start(socket: &Path, name: &str, on_freeze: &str, on_thaw: &str) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_hv-vss"))
                .args(["app", "run", "--name", name, "--socket"])
                .arg(socket)
                .args([
                    "--timeout",
                    "10s",
                    "--on-freeze",
                    on_freeze,
                    "--on-thaw",
                    on_thaw,
                ])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for AppRun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn app_run_commands_flush_before_the_freeze_and_resume_after_the_thaw() {
    daemon_test(|vssd| {
        let mut s = Setup::new(vssd);
        let mnt = s.fs.mount_point().display().to_string();
        let _app = AppRun::start(
            &s.socket(),
            "wrapped",
            &format!("echo flushed > {mnt}/flushed && sync {mnt}/flushed"),
            &format!("echo resumed > {mnt}/resumed && sync {mnt}/resumed"),
        );
        assert!(s.wait_registered("wrapped"), "{}", s.daemon().log());
        assert_eq!(s.request(VssOperation::HOT_BACKUP), OK);
        assert_eq!(s.request(VssOperation::FREEZE), OK, "{}", s.daemon().log());
        assert!(s.fs.mount_point().join("flushed").exists());
        assert!(s.frozen());
        assert_eq!(s.request(VssOperation::THAW), OK);
        assert_eq!(
            std::fs::read_to_string(s.fs.mount_point().join("resumed")).unwrap(),
            "resumed\n"
        );
        assert_eq!(s.daemon().verdicts(2), ["check_passed", "app_consistent"]);
    });
}

#[test]
fn app_run_a_failing_freeze_command_vetoes_and_nothing_is_frozen() {
    daemon_test(|vssd| {
        let mut s = Setup::new(vssd);
        let _app = AppRun::start(&s.socket(), "veto", "exit 7", "true");
        assert!(s.wait_registered("veto"), "{}", s.daemon().log());
        let got = s.request(VssOperation::FREEZE);
        assert_ne!(got, OK, "{}", s.daemon().log());
        assert!(s.writable(), "nothing stays frozen after a veto");
    });
}
