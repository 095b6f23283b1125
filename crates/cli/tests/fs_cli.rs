//! `hv-vss plan`, `freeze --hold`, `thaw --recover`, `thaw --all-frozen` run as a user runs
//! them, on loop-mounted filesystems these tests create (root only; skipped otherwise).
//! `--all-frozen` is only ever run with `--mount` of the test's own filesystems.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hv_vss_testutil::{
    FsKind, LoopFs, TestMount, WriteProbe, freeze_from_other_process, freezing_test, serial,
    skip_unless_root, state_dir, thaw_path,
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn hv_vss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hv-vss"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn plan_discovers_this_machine_as_json_and_text() {
    let out = run(hv_vss().args(["plan", "--json"]));
    assert!(matches!(code(&out), 0 | 4), "{}", stderr(&out));
    let plan = json(&out);
    assert!(
        plan["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["mount_point"] == "/proc" && s["reason"]["kind"] == "pseudo")
    );
    let out = run(hv_vss().arg("plan"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/proc  proc: pseudo filesystem"));
}

#[test]
fn plan_orders_a_stacked_loop_fs_before_its_host() {
    if skip_unless_root("plan test") {
        return;
    }
    let _serial = serial();
    let outer = LoopFs::new(FsKind::Ext4).unwrap();
    let inner = LoopFs::new_in(FsKind::Ext4, outer.mount_point()).unwrap();
    let out = run(hv_vss()
        .args(["plan", "--json", "--mount"])
        .arg(outer.mount_point())
        .arg("--mount")
        .arg(inner.mount_point()));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = json(&out);
    assert_eq!(
        plan["levels"][0][0]["mount_point"],
        inner.mount_point().to_str().unwrap()
    );
    assert_eq!(
        plan["levels"][1][0]["mount_point"],
        outer.mount_point().to_str().unwrap()
    );
    assert_eq!(
        plan["levels"][0][0]["depends_on"][0],
        outer.mount_point().to_str().unwrap()
    );
    let out = run(hv_vss()
        .args(["plan", "--mount"])
        .arg(inner.mount_point())
        .arg("--mount")
        .arg(outer.mount_point()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 filesystem(s) in 2 level(s)"), "{text}");
    drop(inner);
}

#[test]
fn plan_and_freeze_refuse_tmpfs_and_non_mount_points() {
    if skip_unless_root("mount test") {
        return;
    }
    let tmp = TestMount::tmpfs().unwrap();
    for sub in ["plan", "freeze"] {
        let out = run(hv_vss().args([sub, "--mount"]).arg(tmp.mount_point()));
        assert_eq!(code(&out), 5, "{sub}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("tmpfs cannot be frozen (pseudo filesystem)"),
            "{}",
            stderr(&out)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(hv_vss().args(["freeze", "--mount"]).arg(dir.path()));
    assert_eq!(code(&out), 5);
    assert!(
        stderr(&out).contains("not a mount point"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn freeze_hold_reports_timings_and_thaws() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Xfs).unwrap();
        let state = state_dir().unwrap();
        let out = run(hv_vss()
            .args(["freeze", "--hold", "300ms", "--json", "--state-dir"])
            .arg(state.path())
            .arg("--mount")
            .arg(a.mount_point())
            .arg("--mount")
            .arg(b.mount_point()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let r = json(&out);
        assert_eq!(r["thaw"]["complete"], true);
        assert!(r["thaw"]["frozen_window_us"].as_u64().unwrap() >= 300_000);
        assert!(r["held_us"].as_u64().unwrap() >= 300_000);
        let fss = r["freeze"]["filesystems"].as_array().unwrap();
        assert_eq!(fss.len(), 2);
        assert!(
            fss.iter()
                .all(|f| f["outcome"]["state"] == "frozen" && f["freeze_us"].is_u64())
        );
        // Text mode names every filesystem and the frozen window.
        let out = run(hv_vss()
            .args(["freeze", "--hold", "0", "--state-dir"])
            .arg(state.path())
            .arg("--mount")
            .arg(a.mount_point()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("frozen window"), "{text}");
        assert!(text.contains(a.mount_point().to_str().unwrap()), "{text}");
        for fs in [&a, &b] {
            assert!(
                WriteProbe::start(&fs.mount_point().join("w"), b"x").wait(Duration::from_secs(10))
            );
        }
    });
}

#[test]
fn freeze_fails_on_another_freezer_and_on_an_unsafe_state_dir() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Ext4).unwrap();
        let state = state_dir().unwrap();
        freeze_from_other_process(b.mount_point()).unwrap();
        let out = run(hv_vss()
            .args(["freeze", "--state-dir"])
            .arg(state.path())
            .arg("--mount")
            .arg(a.mount_point())
            .arg("--mount")
            .arg(b.mount_point()));
        assert_eq!(code(&out), 6, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("already frozen by another freezer"),
            "{}",
            stderr(&out)
        );
        assert!(WriteProbe::start(&a.mount_point().join("w"), b"x").wait(Duration::from_secs(10)));
        assert!(thaw_path(b.mount_point()).unwrap(), "theirs stayed frozen");

        let out = run(hv_vss()
            .args(["freeze", "--state-dir"])
            .arg(a.mount_point().join("state"))
            .arg("--mount")
            .arg(a.mount_point()));
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert!(stderr(&out).contains("may be frozen"), "{}", stderr(&out));
    });
}

#[test]
fn thaw_recover_after_the_freezer_is_killed() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Btrfs).unwrap();
        let state = state_dir().unwrap();
        let mut child = hv_vss()
            .args(["freeze", "--hold", "10m", "--state-dir"])
            .arg(state.path())
            .arg("--mount")
            .arg(a.mount_point())
            .arg("--mount")
            .arg(b.mount_point())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let journal = state.path().join("freeze-journal.json");
        // The journal appears before the first FIFREEZE; wait until a write blocks too.
        while !journal.exists() {
            assert!(child.try_wait().unwrap().is_none(), "freezer exited early");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Frozen once a write on each blocks (a probe that completes was too early).
        let blocked_probe = |mp: &Path| {
            for i in 0..200 {
                let probe = WriteProbe::start(&mp.join(format!("w{i}")), b"x");
                if !probe.wait(Duration::from_millis(200)) {
                    return probe;
                }
            }
            panic!("{} never froze", mp.display());
        };
        let probe = blocked_probe(a.mount_point());
        let probe_b = blocked_probe(b.mount_point());
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !probe.is_done() && !probe_b.is_done(),
            "frozen after the freezer died"
        );

        // A live freezer is protected: none here, so recovery proceeds.
        let out = run(hv_vss()
            .args(["thaw", "--recover", "--json", "--state-dir"])
            .arg(state.path()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let r = json(&out);
        assert_eq!(r["journal_removed"], true);
        assert_eq!(r["filesystems"].as_array().unwrap().len(), 2);
        assert!(
            r["filesystems"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["outcome"] == "thawed")
        );
        assert!(probe.wait(Duration::from_secs(10)) && probe_b.wait(Duration::from_secs(10)));
        let out = run(hv_vss()
            .args(["thaw", "--recover", "--state-dir"])
            .arg(state.path()));
        assert_eq!(code(&out), 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to recover"));
    });
}

/// Regression (issue 8, item 3): with `on_foreign_freeze = "ignore"`, a freeze of A and B
/// where someone else had frozen B, then SIGKILL: the journal listed B too, and `thaw
/// --recover` thawed someone else's freeze. Now only A is listed and recovered.
#[test]
fn recover_after_sigkill_never_thaws_a_foreign_freeze_the_freezer_ignored() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Ext4).unwrap();
        let state = state_dir().unwrap();
        let config = state.path().join("ignore.toml");
        std::fs::write(&config, "[freezer]\non_foreign_freeze = \"ignore\"\n").unwrap();
        freeze_from_other_process(b.mount_point()).unwrap();
        let mut child = hv_vss()
            .args(["freeze", "--hold", "60s", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(state.path())
            .arg("--mount")
            .arg(a.mount_point())
            .arg("--mount")
            .arg(b.mount_point())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A is frozen once a write on it blocks; B's EBUSY came back in the same level (the
        // freezer prints nothing while frozen), so give that level a moment to finish.
        let mut blocked = None;
        for i in 0..200 {
            assert!(child.try_wait().unwrap().is_none(), "freezer exited early");
            let probe = WriteProbe::start(&a.mount_point().join(format!("w{i}")), b"x");
            if !probe.wait(Duration::from_millis(200)) {
                blocked = Some(probe);
                break;
            }
        }
        let probe = blocked.expect("A never froze");
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();

        let out = run(hv_vss()
            .args(["thaw", "--recover", "--json", "--state-dir"])
            .arg(state.path()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let r = json(&out);
        let listed: Vec<&str> = r["filesystems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert_eq!(listed, vec![a.mount_point().to_str().unwrap()], "{r}");
        assert!(probe.wait(Duration::from_secs(10)), "ours thawed");
        assert!(
            thaw_path(b.mount_point()).unwrap(),
            "the foreign freeze of B was thawed by recovery"
        );
    });
}

/// Regression (issue 8, items 1 and 5): `thaw --recover` (the units' ExecStopPost=)
/// refused while the killed freezer's pid still existed, which is the case while a FIFREEZE
/// it started has not returned. With `--wait` it waits for the pid (pidfd, bounded), then
/// recovers.
#[test]
fn thaw_recover_waits_for_a_lingering_freezer_then_thaws() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let state = state_dir().unwrap();
        let mut child = hv_vss()
            .args(["freeze", "--hold", "10m", "--state-dir"])
            .arg(state.path())
            .arg("--mount")
            .arg(a.mount_point())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut blocked = None;
        for i in 0..200 {
            assert!(child.try_wait().unwrap().is_none(), "freezer exited early");
            let probe = WriteProbe::start(&a.mount_point().join(format!("w{i}")), b"x");
            if !probe.wait(Duration::from_millis(200)) {
                blocked = Some(probe);
                break;
            }
        }
        let probe = blocked.expect("never froze");
        // A freezer that lingers: stopped, as if stuck in a call.
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        let out = run(hv_vss()
            .args(["thaw", "--recover", "--state-dir"])
            .arg(state.path()));
        assert_ne!(code(&out), 0, "recovered under a live freezer");
        assert!(stderr(&out).contains("still alive"), "{}", stderr(&out));
        // With --wait: the freezer ends 500 ms later; recovery then thaws.
        let waiter = hv_vss()
            .args([
                "thaw",
                "--recover",
                "--wait",
                "20s",
                "--json",
                "--state-dir",
            ])
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        let out = waiter.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out)["journal_removed"], true);
        assert!(
            probe.wait(Duration::from_secs(10)),
            "thawed by the recovery"
        );
    });
}

#[test]
fn thaw_without_recover_is_a_usage_error() {
    let out = run(hv_vss().arg("thaw"));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--recover"));
    assert!(stderr(&out).contains("--all-frozen"));
}

#[test]
fn thaw_recover_and_all_frozen_together_are_a_usage_error() {
    // Parsing fails before anything is opened: the paths need not exist.
    for args in [
        &[
            "thaw",
            "--recover",
            "--all-frozen",
            "--mount",
            "/nonexistent/a",
        ][..],
        &["thaw", "--recover", "--mount", "/nonexistent/a"],
        &["thaw", "--mount", "/nonexistent/a"],
        &[
            "thaw",
            "--all-frozen",
            "--force",
            "--mount",
            "/nonexistent/a",
        ],
    ] {
        let out = run(hv_vss().args(args));
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = run(hv_vss().args(["thaw", "--recover", "--all-frozen"]));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

/// `--all-frozen` thaws freezes taken by another process, on the listed mounts only.
#[test]
fn thaw_all_frozen_thaws_what_another_process_froze() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let b = LoopFs::new(FsKind::Xfs).unwrap();
        let other = LoopFs::new(FsKind::Ext4).unwrap();
        for fs in [&a, &b, &other] {
            freeze_from_other_process(fs.mount_point()).unwrap();
        }
        let probes = [a.write_probe(), b.write_probe()];
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            probes.iter().all(|p| !p.is_done()),
            "frozen before the sweep"
        );

        let out = run(hv_vss()
            .args(["thaw", "--all-frozen", "--mount"])
            .arg(a.mount_point())
            .arg("--mount")
            .arg(b.mount_point()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for p in &probes {
            assert!(p.wait_ok(Duration::from_secs(10)), "a write completes");
        }
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("2 thawed, 0 not frozen, 0 failed"), "{text}");
        for fs in [&a, &b] {
            let line = format!("{}  {}", fs.mount_point().display(), fs.kind().name());
            assert!(
                text.lines()
                    .any(|l| l.contains(&line) && l.ends_with("was frozen, now thawed")),
                "{line}: {text}"
            );
        }
        assert!(
            !text.contains(other.mount_point().to_str().unwrap()),
            "{text}"
        );
        assert!(
            stderr(&out).contains("freezes taken by other tools"),
            "{}",
            stderr(&out)
        );
        // Not listed: still frozen.
        assert!(
            thaw_path(other.mount_point()).unwrap(),
            "unlisted stayed frozen"
        );
    });
}

#[test]
fn thaw_all_frozen_reports_a_filesystem_that_is_not_frozen() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        let out = run(hv_vss()
            .args(["thaw", "--all-frozen", "--mount"])
            .arg(a.mount_point()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{}  ext4", a.mount_point().display()))
                && text.contains(": not frozen"),
            "{text}"
        );
        let out = run(hv_vss()
            .args(["thaw", "--all-frozen", "--json", "--mount"])
            .arg(a.mount_point()));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let r = json(&out);
        let fss = r["filesystems"].as_array().unwrap();
        assert_eq!(fss.len(), 1);
        assert_eq!(fss[0]["mount_point"], a.mount_point().to_str().unwrap());
        assert_eq!(fss[0]["outcome"], "not_frozen");
        assert_eq!(fss[0]["dev"], a.dev().unwrap().to_string());
    });
}

/// A tmpfs mounted over a test filesystem's mount point, unmounted on drop.
struct Cover<'a>(&'a Path);

impl<'a> Cover<'a> {
    fn new(path: &'a Path) -> Self {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "hv-vss-cover"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs over {}", path.display());
        Self(path)
    }
}

impl Drop for Cover<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// A failure is reported with its reason and exits 9; a bad `--mount` thaws nothing.
#[test]
fn thaw_all_frozen_fails_on_what_it_cannot_reach_and_on_a_bad_mount() {
    freezing_test(TIMEOUT, || {
        let a = LoopFs::new(FsKind::Ext4).unwrap();
        freeze_from_other_process(a.mount_point()).unwrap();

        // A listed path that is not a mount point: usage of a bad mount, nothing thawed.
        let dir = tempfile::tempdir().unwrap();
        let out = run(hv_vss()
            .args(["thaw", "--all-frozen", "--mount"])
            .arg(a.mount_point())
            .arg("--mount")
            .arg(dir.path()));
        assert_eq!(code(&out), 5, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("not a mount point"),
            "{}",
            stderr(&out)
        );

        // Over-mounted: its path leads to the tmpfs, so the frozen ext4 is not reached.
        {
            let _cover = Cover::new(a.mount_point());
            let out = run(hv_vss()
                .args(["thaw", "--all-frozen", "--mount"])
                .arg(a.mount_point()));
            assert_eq!(code(&out), 9, "{}", stderr(&out));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.lines().any(|l| l.contains("  ext4  ")
                    && l.contains("FAILED, not reached")
                    && l.contains("over-mounted")),
                "{text}"
            );
            assert!(text.contains("1 failed"), "{text}");
            assert!(stderr(&out).contains("SysRq-j"), "{}", stderr(&out));
        }
        assert!(
            thaw_path(a.mount_point()).unwrap(),
            "still frozen after both"
        );
    });
}

#[test]
fn nothing_to_freeze_has_its_exit_code() {
    // A mount table with nothing freezable in it.
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("mountinfo");
    std::fs::write(
        &table,
        "1 0 0:2 / / rw - tmpfs tmpfs rw\n2 1 0:3 / /proc rw - proc proc rw\n",
    )
    .unwrap();
    let out = run(hv_vss().args(["plan", "--mountinfo"]).arg(&table));
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    if hv_vss_testutil::is_root() {
        let out = run(hv_vss().args(["freeze", "--mountinfo"]).arg(&table));
        assert_eq!(code(&out), 4, "{}", stderr(&out));
        assert!(stderr(&out).contains("nothing to freeze"));
    }
    let _ = Path::new("/");
}

/// The CLI writes nothing between the first FIFREEZE and the last FITHAW: its stdout and
/// stderr are files on the very filesystem it freezes, so a single write while frozen would
/// block it on its own freeze forever. It must exit 0 after its hold, with the timings in
/// its output file.
#[test]
fn freeze_with_its_output_on_the_frozen_filesystem_writes_only_after_the_thaw() {
    freezing_test(TIMEOUT, || {
        let fs = LoopFs::new(FsKind::Ext4).unwrap();
        let state = state_dir().unwrap();
        let out_path = fs.mount_point().join("freeze.out");
        let err_path = fs.mount_point().join("freeze.err");
        let mut child = hv_vss()
            .args(["freeze", "--hold", "1s", "--state-dir"])
            .arg(state.path())
            .arg("--mount")
            .arg(fs.mount_point())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(status) = status else {
            // Blocked on its own freeze: thaw it so it can finish, then fail.
            let _ = thaw_path(fs.mount_point());
            let _ = child.kill();
            let _ = child.wait();
            panic!("hv-vss freeze did not exit within 20 s: it wrote while frozen");
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap();
        let stderr = std::fs::read_to_string(&err_path).unwrap();
        assert!(status.success(), "{status}: {stdout}{stderr}");
        assert!(stdout.contains("frozen window"), "{stdout}");
        assert!(
            stdout.contains(fs.mount_point().to_str().unwrap()),
            "{stdout}"
        );
        assert!(fs.writable_within(Duration::from_secs(10)), "thawed");
    });
}

/// `freeze` as an unprivileged user: exit 3 (not root) with a message saying root is
/// needed, before planning or opening anything (`/` is never frozen: FIFREEZE would need
/// CAP_SYS_ADMIN anyway).
#[test]
fn freeze_as_an_unprivileged_user_exits_3_saying_root_is_needed() {
    use std::os::unix::process::CommandExt;
    if skip_unless_root("setuid test (needs root to drop to uid 65534)") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let out = run(hv_vss()
        .args(["freeze", "--hold", "0", "--mount", "/", "--state-dir"])
        .arg(state.path().join("state"))
        .uid(65534)
        .gid(65534));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("needs root"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !state.path().join("state").exists(),
        "the state directory was created"
    );
}
