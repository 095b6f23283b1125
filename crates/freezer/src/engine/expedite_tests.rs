//! The freeze and the expedited-RCU switch (`crate::expedite`), on the fake kernel with a
//! stand-in switch file: on for every FIFREEZE and named in the journal before, off after
//! however the freeze ends, an administrator's setting left alone, a missing switch no
//! reason to fail.

use super::tests::{opts, setup};
use super::*;
use crate::journal::Journal;
use crate::report::Expedite;
use std::path::PathBuf;

fn switch(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("rcu_expedited")
}

fn probed(fake: &mut super::fake::Fake, dir: &tempfile::TempDir) {
    fake.probe = Some((switch(dir), dir.path().join("state")));
}

#[test]
fn the_switch_is_on_and_journalled_for_every_fifreeze_and_off_after() {
    let (plan, mut fake, dir) = setup(vec!["/host", "/img", "/other"]);
    probed(&mut fake, &dir);
    let fake = Arc::new(fake);
    let mut set = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap();
    let seen = fake.seen_at_freeze.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (value, named) in &seen {
        assert_eq!(value, "1");
        assert_eq!(named.as_ref(), Some(&switch(&dir)));
    }
    assert_eq!(std::fs::read_to_string(switch(&dir)).unwrap(), "0");
    assert_eq!(set.report().expedite, Expedite::Expedited);
    let report = set.thaw();
    assert!(report.complete);
    assert_eq!(Journal::read(&dir.path().join("state")).unwrap(), None);
}

#[test]
fn a_freeze_past_its_deadline_turns_the_switch_off_when_it_gives_up() {
    let (plan, mut fake, dir) = setup(vec!["/other", "/img"]);
    fake.hang = vec!["/other".into()];
    probed(&mut fake, &dir);
    let fake = Arc::new(fake);
    let err = freeze_with(&plan, &opts(&dir), fake.clone(), &|| false).unwrap_err();
    assert!(matches!(err.error, FreezeError::Deadline { .. }));
    // Given up on while the call still hangs (300 ms against a 100 ms deadline).
    assert_eq!(std::fs::read_to_string(switch(&dir)).unwrap(), "0");
    assert!(
        fake.seen_at_freeze
            .lock()
            .unwrap()
            .iter()
            .all(|(v, _)| v == "1")
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(fake.frozen.lock().unwrap().is_empty());
}

#[test]
fn a_switch_someone_else_turned_on_is_used_and_left_on() {
    let (plan, mut fake, dir) = setup(vec!["/img"]);
    probed(&mut fake, &dir);
    let fake = Arc::new(fake);
    let o = opts(&dir);
    std::fs::write(switch(&dir), "1\n").unwrap();
    let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
    assert_eq!(set.report().expedite, Expedite::AlreadyOn);
    // Not ours: the journal does not name it, so no recovery turns it off.
    assert_eq!(fake.seen_at_freeze.lock().unwrap()[0], ("1\n".into(), None));
    assert!(set.thaw().complete);
    assert_eq!(std::fs::read_to_string(switch(&dir)).unwrap(), "1\n");
}

#[test]
fn without_a_switch_or_when_not_asked_the_freeze_runs_as_before() {
    let (plan, fake, dir) = setup(vec!["/img"]);
    let fake = Arc::new(fake);
    let mut o = opts(&dir);
    std::fs::remove_file(switch(&dir)).unwrap();
    let mut set = freeze_with(&plan, &o, fake.clone(), &|| false).unwrap();
    match &set.report().expedite {
        Expedite::Unavailable { reason } => assert!(reason.contains("rcu_expedited"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(set.thaw().complete);
    assert!(!switch(&dir).exists(), "a missing switch is not created");

    std::fs::write(switch(&dir), "0").unwrap();
    o.expedite = None;
    let mut set = freeze_with(&plan, &o, fake, &|| false).unwrap();
    assert_eq!(set.report().expedite, Expedite::Off);
    assert!(set.thaw().complete);
    assert_eq!(std::fs::read_to_string(switch(&dir)).unwrap(), "0");
}
