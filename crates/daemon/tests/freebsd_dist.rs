//! dist/freebsd: the rc.d script and the devd rule, checked on Linux (no FreeBSD machine
//! here). The script is parsed with `sh -n` (dash, an ash like FreeBSD's sh) and run
//! against a stand-in for rc.subr that does what rc.subr does with it (defaults, precmd,
//! `command rc_flags command_args`), with mount/pgrep/pkill stubbed; the devd rule is
//! parsed into its statements and checked against the stock /etc/devd/hyperv.conf pattern.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist/freebsd")
        .join(name)
}

#[test]
fn rc_script_parses_and_is_an_rc_subr_service() {
    let path = dist("rc.d/hv_vssd");
    let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "not executable: {mode:o}");
    let text = fs::read_to_string(&path).unwrap();
    for line in [
        "# PROVIDE: hv_vssd",
        ". /etc/rc.subr",
        "name=\"hv_vssd\"",
        "rcvar=\"hv_vssd_enable\"",
        ": \"${hv_vssd_enable:=NO}\"",
        "run_rc_command \"$1\"",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line: {line}");
    }
    let keywords = text
        .lines()
        .find_map(|l| l.strip_prefix("# KEYWORD:"))
        .expect("KEYWORD line");
    for k in ["nostart", "shutdown"] {
        assert!(keywords.split_whitespace().any(|w| w == k), "{keywords}");
    }
    // rc.subr runs ${name}_program in place of command (daemon(8)).
    assert!(!text.contains("hv_vssd_program=") && !text.contains("{hv_vssd_program"));
}

/// Runs the script's `start` under the stand-in rc.subr; returns (the command line it
/// would run, the mount calls made).
fn start(dir: &Path, env: &[(&str, &str)], mounted: &str) -> (String, String) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("mount.log");
    let _ = fs::remove_file(&log);
    let stub = |name: &str, body: &str| {
        let p = bin.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    stub(
        "mount",
        &format!(
            "if [ \"$1\" = -p ]; then printf '%s' '{mounted}'; else echo \"$*\" >> '{}'; fi",
            log.display()
        ),
    );
    stub("pgrep", "exit 1");
    stub("pkill", "exit 0");
    let rc_subr = dir.join("rc.subr");
    fs::write(
        &rc_subr,
        "load_rc_config() { :; }\n\
         warn() { echo \"warn: $*\" >&2; }\n\
         info() { :; }\n\
         run_rc_command() {\n\
         \trc_flags=\"$hv_vssd_flags\"\n\
         \t$start_precmd || exit 1\n\
         \techo $command $rc_flags $command_args\n\
         }\n",
    )
    .unwrap();
    let script = fs::read_to_string(dist("rc.d/hv_vssd"))
        .unwrap()
        .replace(". /etc/rc.subr", &format!(". {}", rc_subr.display()));
    let script_path = dir.join("hv_vssd");
    fs::write(&script_path, script).unwrap();
    let out = Command::new("sh")
        .arg(&script_path)
        .arg("start")
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("hv_vssd_bin", "/bin/true")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn rc_start_runs_hv_vssd_under_daemon_with_its_flags_and_a_tmpfs_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("hv-vss.toml");
    let state_s = state.to_str().unwrap();
    let config_s = config.to_str().unwrap();
    let env = [
        ("hv_vssd_state_dir", state_s),
        ("hv_vssd_config", config_s),
        ("hv_vssd_flags", "--debug"),
    ];

    // No config file, state dir not a tmpfs yet.
    let (line, mounts) = start(dir.path(), &env, "/dev/ada0p2 / ufs rw 1 1\n");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "/usr/sbin/daemon", "{line}");
    let at = words.iter().position(|w| *w == "/bin/true").expect(&line);
    let (supervisor, daemon) = words.split_at(at);
    assert!(supervisor.contains(&"-P"), "{line}");
    assert!(
        !supervisor.contains(&"--debug"),
        "flags went to daemon(8): {line}"
    );
    assert_eq!(
        daemon[1..],
        ["-n", "--state-dir", state_s, "--debug"],
        "{line}"
    );
    assert!(state.is_dir());
    assert_eq!(
        mounts.trim(),
        format!("-t tmpfs -o mode=0711,size=16m tmpfs {state_s}")
    );

    // With a config file, and the tmpfs already there.
    fs::write(&config, "").unwrap();
    let (line, mounts) = start(
        dir.path(),
        &env,
        &format!("/dev/ada0p2 / ufs rw 1 1\ntmpfs {state_s} tmpfs rw,mode=0711 0 0\n"),
    );
    assert!(
        line.ends_with(&format!(
            "/bin/true -n --config {config_s} --state-dir {state_s} --debug"
        )),
        "{line}"
    );
    assert_eq!(mounts, "", "mounted a second tmpfs");
}

/// One `notify N { ... };` statement: its priority, `match` pairs and actions.
#[derive(Debug)]
struct Notify {
    priority: u32,
    matches: Vec<(String, String)>,
    actions: Vec<String>,
}

/// The quoted strings of one substatement line.
fn quoted(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn parse_devd(text: &str) -> Vec<Notify> {
    let mut out = Vec::new();
    let mut current: Option<Notify> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("notify ") {
            assert!(current.is_none(), "nested statement: {line}");
            let priority = rest.strip_suffix(" {").expect(line).parse().expect(line);
            current = Some(Notify {
                priority,
                matches: Vec::new(),
                actions: Vec::new(),
            });
        } else if line == "};" {
            out.push(current.take().expect("}; without a statement"));
        } else {
            let n = current.as_mut().expect("substatement outside a statement");
            assert!(line.ends_with("\";"), "unterminated: {line}");
            let q = quoted(line);
            if line.starts_with("match ") {
                assert_eq!(q.len(), 2, "{line}");
                n.matches.push((q[0].clone(), q[1].clone()));
            } else if line.starts_with("action ") {
                assert_eq!(q.len(), 1, "{line}");
                n.actions.push(q[0].clone());
            } else {
                panic!("unknown substatement: {line}");
            }
        }
    }
    assert!(current.is_none(), "statement not closed");
    out
}

#[test]
fn devd_rule_takes_hv_fsvss_dev_over_from_the_stock_rule() {
    let text = fs::read_to_string(dist("devd/hv_vssd.conf")).unwrap();
    // devd expands $name in actions; none is meant here.
    assert!(!text.lines().any(|l| !l.starts_with('#') && l.contains('$')));
    let statements = parse_devd(&text);
    assert_eq!(statements.len(), 2, "{statements:?}");
    let mut types = Vec::new();
    for n in &statements {
        // The stock rules in /etc/devd/hyperv.conf have priority 11; devd runs only the
        // highest-priority match.
        assert!(n.priority > 11, "{n:?}");
        let get = |k: &str| {
            n.matches
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("system"), Some("DEVFS"));
        assert_eq!(get("subsystem"), Some("CDEV"));
        assert_eq!(get("cdev"), Some("hv_fsvss_dev"));
        types.push(get("type").unwrap().to_owned());
        assert_eq!(n.actions.len(), 1);
        let action = &n.actions[0];
        assert!(action.contains("service hv_vssd enabled"), "{action}");
        let out = Command::new("sh")
            .args(["-n", "-c", action])
            .output()
            .unwrap();
        assert!(out.status.success(), "sh -n -c {action:?}");
    }
    types.sort();
    assert_eq!(types, ["CREATE", "DESTROY"]);
    let create = statements
        .iter()
        .find(|n| n.matches.contains(&("type".into(), "CREATE".into())))
        .unwrap();
    // Not enabled: the stock daemon, as before.
    assert!(create.actions[0].contains("else /usr/sbin/hv_vss_daemon;"));
    assert!(create.actions[0].contains("service hv_vssd quietstart"));
}
