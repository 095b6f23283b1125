//! Running hooks: order, veto, abort, timeouts, output, process setup and styles, with real
//! scripts and real processes.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, chmod, lines};
use hv_vss_hooks::{HookOp, HookOutcome, HookSet, HookStyle, OUTPUT_LIMIT, RunReport};

/// The timeout for hooks meant to time out, and the deadline meant to pass.
const SHORT: Duration = Duration::from_secs(1);
/// The timeout for hooks meant to finish: generous, so a loaded machine cannot fail them.
const ROOMY: Duration = Duration::from_secs(20);

fn load(fx: &Fixture, style: HookStyle, timeout: Duration) -> HookSet {
    let set = HookSet::load(&fx.dir(style, timeout)).expect("load hooks.d");
    assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    set
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn outcomes(report: &RunReport) -> Vec<(String, HookOutcome)> {
    report
        .results
        .iter()
        .map(|r| {
            let name = r.path.file_name().unwrap().to_string_lossy().into_owned();
            (name, r.outcome.clone())
        })
        .collect()
}

fn output(report: &RunReport, index: usize) -> String {
    String::from_utf8_lossy(&report.results[index].output).into_owned()
}

#[test]
fn freeze_in_order_thaw_and_abort_in_reverse() {
    let Some(fx) = Fixture::for_root("freeze_in_order_thaw_and_abort_in_reverse") else {
        return;
    };
    for name in ["20-b", "10-a", "30-c"] {
        fx.logging(name, "exit 0");
    }
    let set = load(&fx, HookStyle::Native, ROOMY);

    let freeze = set.run(HookOp::Freeze, far());
    assert!(freeze.ok, "{freeze:?}");
    assert_eq!(fx.log_lines(), lines(&["10-a", "20-b", "30-c"], "freeze"));

    fx.clear_log();
    let thaw = set.run(HookOp::Thaw, far());
    assert!(thaw.ok);
    assert_eq!(fx.log_lines(), lines(&["30-c", "20-b", "10-a"], "thaw"));

    fx.clear_log();
    let abort = set.run(HookOp::Abort, far());
    assert!(abort.ok);
    assert_eq!(fx.log_lines(), lines(&["30-c", "20-b", "10-a"], "abort"));
}

#[test]
fn failing_freeze_vetoes_and_later_hooks_do_not_run() {
    let Some(fx) = Fixture::for_root("failing_freeze_vetoes_and_later_hooks_do_not_run") else {
        return;
    };
    fx.logging("10-a", "exit 0");
    fx.logging("20-b", "[ \"$1\" = freeze ] && exit 3; exit 0");
    fx.logging("30-c", "exit 0");
    let set = load(&fx, HookStyle::Native, ROOMY);

    let freeze = set.run(HookOp::Freeze, far());
    assert!(!freeze.ok);
    assert_eq!(
        outcomes(&freeze),
        [
            ("10-a".into(), HookOutcome::Exited(0)),
            ("20-b".into(), HookOutcome::Exited(3))
        ]
    );
    assert_eq!(fx.log_lines(), lines(&["10-a", "20-b"], "freeze"));

    // Abort reaches exactly the hooks told to freeze, the vetoing one included, in reverse.
    fx.clear_log();
    let abort = set.run_abort(&freeze, far());
    assert!(abort.ok, "{abort:?}");
    assert_eq!(fx.log_lines(), lines(&["20-b", "10-a"], "abort"));
}

#[test]
fn thaw_and_abort_continue_past_failures() {
    let Some(fx) = Fixture::for_root("thaw_and_abort_continue_past_failures") else {
        return;
    };
    fx.logging("10-a", "exit 0");
    fx.logging("20-b", "exit 1");
    fx.logging("30-c", "kill -TERM $$");
    let set = load(&fx, HookStyle::Native, ROOMY);

    for (op, arg) in [(HookOp::Thaw, "thaw"), (HookOp::Abort, "abort")] {
        fx.clear_log();
        let report = set.run(op, far());
        assert!(!report.ok);
        assert_eq!(fx.log_lines(), lines(&["30-c", "20-b", "10-a"], arg));
        assert_eq!(
            outcomes(&report),
            [
                ("30-c".into(), HookOutcome::Signalled(15)),
                ("20-b".into(), HookOutcome::Exited(1)),
                ("10-a".into(), HookOutcome::Exited(0)),
            ]
        );
        assert_eq!(report.failures().count(), 2);
    }
}

/// `/proc/PID` gone, or a zombie waiting for its new parent to reap it.
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn timeout_kills_the_whole_process_group_and_vetoes() {
    let Some(fx) = Fixture::for_root("timeout_kills_the_whole_process_group_and_vetoes") else {
        return;
    };
    let grandchild = fx.tmp.path().join("grandchild.pid");
    // The hook forks a long sleeper that keeps the output pipe open, then hangs itself.
    fx.script(
        "10-hang",
        &format!(
            "sleep 300 &\necho $! > {}\necho started\nsleep 300\n",
            grandchild.display()
        ),
    );
    fx.logging("20-after", "exit 0");
    let set = load(&fx, HookStyle::Native, SHORT);

    let freeze = set.run(HookOp::Freeze, far());
    assert!(!freeze.ok);
    assert_eq!(
        outcomes(&freeze),
        [("10-hang".into(), HookOutcome::TimedOut)]
    );
    assert_eq!(output(&freeze, 0), "started\n");
    assert!(fx.log_lines().is_empty(), "the veto stops later hooks");

    let pid = read_pid(&grandchild);
    let gone_by = Instant::now() + Duration::from_secs(5);
    while !is_dead(pid) && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(is_dead(pid), "grandchild {pid} survived the timeout kill");
}

#[test]
fn deadline_shortens_the_timeout_and_stops_starting_hooks() {
    let Some(fx) = Fixture::for_root("deadline_shortens_the_timeout_and_stops_starting_hooks")
    else {
        return;
    };
    fx.logging("10-b", "exit 0");
    fx.logging("20-slow", "sleep 30");
    // A per-hook timeout of a minute, but the run's deadline is in one second: the slow hook
    // (first on thaw) is killed at the deadline, and the next one is not started.
    let set = load(&fx, HookStyle::Native, Duration::from_secs(60));
    let thaw = set.run(HookOp::Thaw, Instant::now() + SHORT);
    assert!(!thaw.ok);
    assert_eq!(
        outcomes(&thaw),
        [
            ("20-slow".into(), HookOutcome::TimedOut),
            ("10-b".into(), HookOutcome::DeadlinePassed),
        ]
    );
    assert_eq!(fx.log_lines(), lines(&["20-slow"], "thaw"));
    assert!(set.budget() >= Duration::from_secs(120));

    let late = set.run(HookOp::Freeze, Instant::now());
    assert_eq!(
        outcomes(&late),
        [("10-b".into(), HookOutcome::DeadlinePassed)]
    );
    assert!(!late.ok);
}

#[test]
fn background_child_holding_the_pipe_does_not_hang_the_run() {
    let Some(fx) = Fixture::for_root("background_child_holding_the_pipe_does_not_hang_the_run")
    else {
        return;
    };
    let pgid_file = fx.tmp.path().join("pgid");
    // Like the qemu-ga MySQL sample: leave a process behind that outlives the hook.
    fx.script(
        "10-holder",
        &format!(
            "echo $$ > {}\nsleep 30 &\necho held\nexit 0\n",
            pgid_file.display()
        ),
    );
    let set = load(&fx, HookStyle::Native, Duration::from_secs(20));
    let freeze = set.run(HookOp::Freeze, far());
    let pgid = read_pid(&pgid_file);
    // The leftover is not killed on a normal exit: clean it up here.
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pgid).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert_eq!(
        outcomes(&freeze),
        [("10-holder".into(), HookOutcome::Exited(0))]
    );
    assert_eq!(output(&freeze, 0), "held\n");
}

#[test]
fn output_is_captured_from_both_streams_and_bounded() {
    let Some(fx) = Fixture::for_root("output_is_captured_from_both_streams_and_bounded") else {
        return;
    };
    fx.script("10-both", "echo out\necho err >&2\necho out2\n");
    // 100 KiB: more than the limit and more than a pipe buffer, so a runner that stopped
    // reading at the limit would leave the hook blocked until its timeout.
    fx.script("20-chatty", "head -c 102400 /dev/zero | tr '\\0' x\n");
    let set = load(&fx, HookStyle::Native, Duration::from_secs(20));
    let freeze = set.run(HookOp::Freeze, far());
    assert!(freeze.ok, "{freeze:?}");
    assert_eq!(output(&freeze, 0), "out\nerr\nout2\n");
    assert!(!freeze.results[0].truncated);
    assert_eq!(freeze.results[1].output, vec![b'x'; OUTPUT_LIMIT]);
    assert!(freeze.results[1].truncated);
}

#[test]
fn hooks_run_detached_with_a_minimal_environment() {
    let Some(fx) = Fixture::for_root("hooks_run_detached_with_a_minimal_environment") else {
        return;
    };
    // A descriptor this process opened without O_CLOEXEC must not reach the hook.
    let probe = fx.tmp.path().join("leak-probe");
    let file = std::fs::File::create(&probe).unwrap();
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).unwrap();
    let fd = file.as_raw_fd();
    fx.script(
        "10-env",
        &format!(
            "echo \"sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$\"\n\
             echo \"stdin=$(readlink /proc/$$/fd/0)\"\n\
             echo \"cwd=$(pwd)\"\n\
             echo \"probe=$(readlink /proc/$$/fd/{fd})\"\n\
             env | sort\n"
        ),
    );
    let set = load(&fx, HookStyle::Native, Duration::from_secs(5));
    let freeze = set.run(HookOp::Freeze, far());
    assert!(freeze.ok, "{freeze:?}");
    let out = output(&freeze, 0);
    let mut lines = out.lines();
    let ids = lines.next().unwrap();
    let (sid, pid) = ids.split_once(' ').unwrap();
    assert_eq!(
        sid.trim_start_matches("sid="),
        pid.trim_start_matches("pid="),
        "{ids}"
    );
    assert_eq!(lines.next(), Some("stdin=/dev/null"));
    assert_eq!(lines.next(), Some("cwd=/"));
    let probe_line = lines.next().unwrap();
    assert!(!probe_line.contains("leak-probe"), "{probe_line}");
    let env: Vec<&str> = lines.collect();
    // The shell adds PWD itself; nothing of the parent's environment (CARGO_*, HOME, ...).
    let inherited: Vec<_> = env.iter().filter(|l| !l.starts_with("PWD=")).collect();
    assert_eq!(
        inherited,
        [&format!("PATH={}", hv_vss_hooks::HOOK_PATH)],
        "{env:?}"
    );
    drop(file);
}

#[test]
fn unstartable_hook_vetoes_freeze() {
    let Some(fx) = Fixture::for_root("unstartable_hook_vetoes_freeze") else {
        return;
    };
    let bad = fx.hooks.join("10-bad-interpreter");
    std::fs::write(&bad, "#!/nonexistent/interpreter\n").unwrap();
    chmod(&bad, 0o755);
    fx.logging("20-b", "exit 0");
    let set = load(&fx, HookStyle::Native, ROOMY);
    let freeze = set.run(HookOp::Freeze, far());
    assert!(!freeze.ok);
    assert!(matches!(
        freeze.results[0].outcome,
        HookOutcome::SpawnFailed(_)
    ));
    assert_eq!(freeze.results.len(), 1);
    // Its code never ran, so nothing is aborted.
    assert_eq!(set.run_abort(&freeze, far()).results, []);
}

#[test]
fn a_hook_made_unsafe_after_load_is_not_run() {
    let Some(fx) = Fixture::for_root("a_hook_made_unsafe_after_load_is_not_run") else {
        return;
    };
    let hook = fx.logging("10-a", "exit 0");
    let set = load(&fx, HookStyle::Native, ROOMY);
    chmod(&hook, 0o777);
    let thaw = set.run(HookOp::Thaw, far());
    assert!(!thaw.ok);
    match &thaw.results[0].outcome {
        HookOutcome::SpawnFailed(why) => assert!(why.contains("writable"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(fx.log_lines().is_empty());
}

#[test]
fn qemu_ga_style_gets_freeze_and_thaw_and_thaw_on_abort() {
    let Some(fx) = Fixture::for_root("qemu_ga_style_gets_freeze_and_thaw_and_thaw_on_abort") else {
        return;
    };
    // Shaped like an fsfreeze-hook.d script: knows freeze and thaw only, fails otherwise.
    for name in ["10-a", "20-b"] {
        fx.logging(
            name,
            "case \"$1\" in freeze|thaw) exit 0 ;; *) echo \"unknown $1\" >&2; exit 1 ;; esac",
        );
    }
    let set = load(&fx, HookStyle::QemuGa, ROOMY);
    assert!(set.run(HookOp::Freeze, far()).ok);
    assert!(set.run(HookOp::Thaw, far()).ok);
    let abort = set.run(HookOp::Abort, far());
    assert!(abort.ok, "{abort:?}");
    let mut expected = lines(&["10-a", "20-b"], "freeze");
    expected.extend(lines(&["20-b", "10-a"], "thaw"));
    expected.extend(lines(&["20-b", "10-a"], "thaw"));
    assert_eq!(fx.log_lines(), expected);
}

#[test]
fn vmware_style_gets_freeze_freeze_fail_and_thaw() {
    let Some(fx) = Fixture::for_root("vmware_style_gets_freeze_freeze_fail_and_thaw") else {
        return;
    };
    for name in ["10-a", "20-b"] {
        fx.logging(
            name,
            "case \"$1\" in freeze|freezeFail|thaw) exit 0 ;; *) exit 1 ;; esac",
        );
    }
    fx.logging("30-veto", "[ \"$1\" = freeze ] && exit 1; exit 0");
    let set = load(&fx, HookStyle::Vmware, ROOMY);
    let freeze = set.run(HookOp::Freeze, far());
    assert!(!freeze.ok);
    let abort = set.run_abort(&freeze, far());
    assert!(abort.ok, "{abort:?}");
    fx.clear_log();
    chmod(&fx.hooks.join("30-veto"), 0o644);
    let set = HookSet::load(&fx.dir(HookStyle::Vmware, ROOMY)).unwrap();
    assert!(set.run(HookOp::Freeze, far()).ok);
    assert!(set.run(HookOp::Thaw, far()).ok);
    let mut expected = lines(&["10-a", "20-b"], "freeze");
    expected.extend(lines(&["20-b", "10-a"], "thaw"));
    assert_eq!(fx.log_lines(), expected);
    // And the aborted run before: freezeFail went to all three, in reverse.
    assert_eq!(
        abort.results.iter().map(|r| r.arg).collect::<Vec<_>>(),
        ["freezeFail"; 3]
    );
    assert_eq!(
        outcomes(&abort)
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        ["30-veto", "20-b", "10-a"]
    );
}

#[test]
fn a_relative_hook_directory_runs_from_the_root_working_directory() {
    let Some(fx) =
        Fixture::for_root("a_relative_hook_directory_runs_from_the_root_working_directory")
    else {
        return;
    };
    fx.logging("10-a", "exit 0");
    // Relative to this process's working directory. (`..` stops at `/`, so from the hooks'
    // working directory `/` it happens to name the same place; what matters is that the set
    // holds absolute paths, so nothing depends on where the hook starts.)
    let relative: std::path::PathBuf = std::iter::repeat_n("..", 64)
        .collect::<std::path::PathBuf>()
        .join(fx.hooks.strip_prefix("/").unwrap());
    let dir = hv_vss_hooks::HookDir {
        path: relative,
        ..fx.dir(HookStyle::Native, ROOMY)
    };
    let set = HookSet::load(&dir).unwrap();
    assert!(set.hooks()[0].is_absolute());
    let freeze = set.run(HookOp::Freeze, far());
    assert!(freeze.ok, "{freeze:?}");
    assert_eq!(fx.log_lines(), lines(&["10-a"], "freeze"));
}
