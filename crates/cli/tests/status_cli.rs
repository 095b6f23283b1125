//! `hv-vss status` against no daemon, the real hv-vssd idle, the same daemon holding a
//! FREEZE of a loop-mounted ext4 this test made, and after it stopped. The host is the
//! simulated one (hv-vss-sim) in this process, over the UIO hand-over socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hv_vss_sim::host::{HandoverListener, HostConfig, HostSimulator};
use hv_vss_testutil::{FsKind, LoopFs, freezing_test};
use hv_vss_vmbus::shm::ShmRings;

fn status(state: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hv-vss"));
    cmd.arg("status").arg("--state-dir").arg(state);
    if json {
        cmd.arg("--json");
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status_json(state: &Path) -> (Option<i32>, serde_json::Value) {
    let out = status(state, true);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    (out.status.code(), doc)
}

/// Polls `status --json` until `ok` holds or `limit` passes.
fn wait_status(
    state: &Path,
    limit: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + limit;
    loop {
        let (_, doc) = status_json(state);
        if ok(&doc) || Instant::now() >= end {
            return doc;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn built_daemon() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_hv-vss")).with_file_name("hv-vssd");
    path.exists().then_some(path)
}

#[test]
fn no_daemon_exits_10_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let out = status(state.path(), false);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("hv-vssd:     not running"), "{stdout}");
    assert!(stdout.contains("last backup: none recorded"), "{stdout}");
    let (code, doc) = status_json(state.path());
    assert_eq!(code, Some(10));
    assert_eq!(doc["daemon"]["running"], false);
    assert!(doc["frozen"].is_null());
}

/// A corrupt freeze journal is one line and exit 11, not a panic.
#[test]
fn a_corrupt_journal_exits_11() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("freeze-journal.json"), "{ not a journal").unwrap();
    let out = status(state.path(), false);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn running_frozen_and_stopped_daemon() {
    let Some(daemon) = built_daemon() else {
        eprintln!("SKIPPED: hv-vssd is not built next to hv-vss (cargo build -p hv-vssd)");
        return;
    };
    if hv_vss_testutil::skip_unless_root("loop-mounts and freezes an ext4 image") {
        return;
    }
    freezing_test(Duration::from_secs(120), move || {
        let fs = LoopFs::new(FsKind::Ext4).unwrap();
        let state = hv_vss_testutil::tmpfs_state_dir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let socket = work.path().join("vss.sock");
        let listener = HandoverListener::bind(&socket).unwrap();
        let log = work.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).unwrap();
        // The node_exporter textfile, outside the frozen filesystem.
        let textfile = work.path().join("hv-vss.prom");
        let config = work.path().join("hv-vss.toml");
        std::fs::write(
            &config,
            format!(
                "metrics_textfile = {:?}\ncontrol_group = \"nogroup\"\n",
                textfile.display().to_string()
            ),
        )
        .unwrap();
        let child = Command::new(&daemon)
            .arg("--config")
            .arg(&config)
            .arg("--uio")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state.path())
            .arg("--mount")
            .arg(fs.mount_point())
            .args(["--auto-thaw", "60", "-n"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut running = Running { child, log };
        let conn = listener
            .accept(Duration::from_secs(15))
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "no connect: {}",
                    std::fs::read_to_string(&running.log).unwrap()
                )
            });
        let rings = ShmRings::create(256 * 1024).unwrap();
        rings.send_over(&conn).unwrap();
        let mut host = HostSimulator::new(
            rings,
            HostConfig::default().with_reply_timeout(Duration::from_secs(20)),
        )
        .unwrap();
        host.negotiate().unwrap();

        // Running and idle.
        let out = status(state.path(), false);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("running (pid {}", running.child.id())),
            "{stdout}"
        );
        assert!(stdout.contains("state:       idle"), "{stdout}");
        // The daemon's own answer over its control socket.
        assert!(
            stdout.contains("negotiated framework 3.0, VSS 5.0"),
            "{stdout}"
        );
        assert!(stdout.contains("daemon:      idle"), "{stdout}");
        assert!(stdout.contains("apps:        none registered"), "{stdout}");
        let (_, doc) = status_json(state.path());
        let answer = &doc["daemon"]["answer"];
        assert_eq!(doc["daemon"]["asked"], "answered", "{doc:#}");
        assert_eq!(answer["mode"], "uio", "{doc:#}");
        assert_eq!(answer["transport"], socket.display().to_string());
        assert_eq!(answer["frozen"], false);

        // `control_group`: a member that is not root may ask the daemon; others may not.
        let as_user = |gid: u32| {
            use std::os::unix::process::CommandExt;
            let out = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
                .args(["status", "--json", "--state-dir"])
                .arg(state.path())
                .uid(65534)
                .gid(gid)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let doc: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            (out, doc)
        };
        let (out, doc) = as_user(65534);
        assert_eq!(
            doc["daemon"]["asked"],
            "answered",
            "member of control_group: {doc:#} {}",
            text(&out.stderr)
        );
        assert_eq!(doc["daemon"]["answer"]["mode"], "uio", "{doc:#}");
        let (out, doc) = as_user(65533);
        assert_ne!(
            doc["daemon"]["asked"],
            "answered",
            "not a member: {doc:#} {}",
            text(&out.stderr)
        );

        // Frozen: the host holds a FREEZE.
        assert!(host.hot_backup().unwrap().is_ok());
        // The check's report is stored just after its reply (at the latest when the next
        // request arrives, before a FREEZE can hold the files): the textfile has it.
        let end = Instant::now() + Duration::from_secs(5);
        let before_freeze = loop {
            match std::fs::read_to_string(&textfile) {
                Ok(text) => break text,
                Err(e) if Instant::now() >= end => panic!("textfile after the check: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        assert!(before_freeze.contains("hv_vss_up 1"), "{before_freeze}");
        // The running daemon's own figures: nothing registered, nothing dropped.
        assert!(
            before_freeze.contains("hv_vss_connected_apps 0")
                && before_freeze.contains("hv_vss_log_lines_dropped_total 0"),
            "{before_freeze}"
        );
        assert!(host.freeze().unwrap().is_ok());
        assert_eq!(std::fs::read_to_string(&textfile).unwrap(), before_freeze);
        let (code, doc) = status_json(state.path());
        assert_eq!(code, Some(0));
        assert_eq!(doc["daemon"]["running"], true);
        assert_eq!(doc["daemon"]["pid"], running.child.id());
        assert_eq!(
            doc["frozen"]["filesystems"][0],
            fs.mount_point().display().to_string(),
            "{doc:#}"
        );
        let answer = &doc["daemon"]["answer"];
        assert_eq!(answer["state"], "frozen", "{doc:#}");
        assert_eq!(answer["frozen"], true, "{doc:#}");
        // The auto-thaw bound (60 s) is the latest the freeze can last.
        let deadline = answer["deadline_unix_ms"].as_u64().expect("a deadline");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(deadline > now && deadline <= now + 61_000, "{doc:#}");
        let out = status(state.path(), false);
        let stdout = text(&out.stdout);
        assert!(stdout.contains("state:       frozen since"), "{stdout}");
        assert!(
            stdout.contains("daemon:      frozen (filesystems frozen), thawed by "),
            "{stdout}"
        );

        // Thawed, and the backup closed: idle, the last backup's verdict.
        assert!(host.thaw().unwrap().is_ok());
        // Not rewritten by the thaw either: the backup's entry waits for BU_COMPLETE.
        assert_eq!(std::fs::read_to_string(&textfile).unwrap(), before_freeze);
        assert!(host.bu_complete().unwrap().is_ok());
        let doc = wait_status(state.path(), Duration::from_secs(10), |d| {
            !d["last_backup"].is_null()
        });
        assert!(doc["frozen"].is_null(), "{doc:#}");
        assert_eq!(
            doc["last_backup"]["verdict"]["kind"], "fs_consistent",
            "{doc:#}"
        );
        // How its FIFREEZE calls used the kernel's expedited RCU grace periods (the
        // machine's switch, which another test's freeze may have on at the same moment).
        let expedite = &doc["last_backup"]["expedite"]["state"];
        assert!(
            expedite == "expedited" || expedite == "already_on",
            "{doc:#}"
        );
        let after = std::fs::read_to_string(&textfile).unwrap();
        assert!(
            after.contains("hv_vss_backups_total{verdict=\"fs_consistent\"} 1"),
            "{after}"
        );

        // Stopped: exit 10, the last backup still shown from the history.
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(running.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let exited = running.child.wait().unwrap();
        assert!(
            exited.success(),
            "{}",
            std::fs::read_to_string(&running.log).unwrap()
        );
        drop(conn);
        let out = status(state.path(), false);
        assert_eq!(out.status.code(), Some(10));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("not running"), "{stdout}");
        assert!(
            stdout.contains("last backup: fs_consistent at "),
            "{stdout}"
        );
        assert!(
            !state.path().join("control.sock").exists(),
            "the daemon removes its control socket when it stops"
        );
    });
}
