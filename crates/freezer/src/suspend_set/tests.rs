//! The ordering, rollback and resume of [`SuspendedSet`] over a fake [`Suspender`].
//!
//! A fake, because the real suspender (UFS through `/dev/ufssuspend`, `crate::freebsd`)
//! cannot run on Linux, where these tests run: there is no UFS suspension here. The fake
//! records every call and every drop of a holder (the drop standing for FreeBSD's close,
//! which resumes), so the tests check what a FreeBSD user would: what was suspended, in
//! which order, and that nothing stays suspended after a failure.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;

type Log = Rc<RefCell<Vec<String>>>;

#[derive(Debug)]
struct FakeError(String);

impl std::fmt::Display for FakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FakeError {}

/// Fails to suspend the targets named in `fail_suspend`, to resume those in `fail_resume`.
struct Fake {
    log: Log,
    fail_suspend: Vec<&'static str>,
    fail_resume: Vec<&'static str>,
}

/// A held suspension: ends (is logged as `closed`) when dropped.
#[derive(Debug)]
struct FakeHeld {
    name: String,
    log: Log,
}

impl Drop for FakeHeld {
    fn drop(&mut self) {
        self.log.borrow_mut().push(format!("closed {}", self.name));
    }
}

impl Suspender for Fake {
    type Target = &'static str;
    type Held = FakeHeld;
    type Error = FakeError;

    fn suspend(&self, target: &&'static str) -> Result<FakeHeld, FakeError> {
        self.log.borrow_mut().push(format!("suspend {target}"));
        if self.fail_suspend.contains(target) {
            return Err(FakeError(format!("{target}: EBUSY")));
        }
        Ok(FakeHeld {
            name: target.to_string(),
            log: self.log.clone(),
        })
    }

    fn resume(&self, held: FakeHeld) -> Result<(), FakeError> {
        self.log.borrow_mut().push(format!("resume {}", held.name));
        if self.fail_resume.contains(&held.name.as_str()) {
            return Err(FakeError(format!("{}: no suspension", held.name)));
        }
        Ok(())
    }
}

fn fake(fail_suspend: &[&'static str], fail_resume: &[&'static str]) -> Fake {
    Fake {
        log: Log::default(),
        fail_suspend: fail_suspend.to_vec(),
        fail_resume: fail_resume.to_vec(),
    }
}

fn log(fake: &Fake) -> Vec<String> {
    fake.log.borrow().clone()
}

const TARGETS: [&str; 3] = ["/a", "/b", "/c"];

#[test]
fn suspends_in_order_and_resumes_newest_first() {
    let fake = fake(&[], &[]);
    let set = SuspendedSet::suspend_all(&fake, TARGETS.iter(), |t| t.to_string()).unwrap();
    assert_eq!(set.names().collect::<Vec<_>>(), ["/a", "/b", "/c"]);
    let outcomes = set.resume();
    assert!(outcomes.iter().all(|o| o.error.is_none()));
    assert_eq!(
        outcomes.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["/c", "/b", "/a"]
    );
    assert_eq!(
        log(&fake),
        [
            "suspend /a",
            "suspend /b",
            "suspend /c",
            "resume /c",
            "closed /c",
            "resume /b",
            "closed /b",
            "resume /a",
            "closed /a",
        ]
    );
}

#[test]
fn a_failure_resumes_what_was_suspended_and_stops() {
    let fake = fake(&["/b"], &[]);
    let err = SuspendedSet::suspend_all(&fake, TARGETS.iter(), |t| t.to_string()).unwrap_err();
    assert_eq!(err.failed, "/b");
    assert_eq!(err.error.0, "/b: EBUSY");
    assert_eq!(
        err.rolled_back,
        [ResumeOutcome {
            name: "/a".into(),
            error: None
        }]
    );
    // /c is never attempted, /a is resumed and closed: nothing stays suspended.
    assert_eq!(
        log(&fake),
        ["suspend /a", "suspend /b", "resume /a", "closed /a"]
    );
    assert!(err.to_string().contains("suspending /b failed"), "{err}");
}

#[test]
fn a_failing_resume_is_reported_and_the_rest_still_resume() {
    let fake = fake(&[], &["/b"]);
    let set = SuspendedSet::suspend_all(&fake, TARGETS.iter(), |t| t.to_string()).unwrap();
    let outcomes = set.resume();
    assert_eq!(outcomes[1].name, "/b");
    assert_eq!(outcomes[1].error.as_deref(), Some("/b: no suspension"));
    assert!(outcomes[0].error.is_none() && outcomes[2].error.is_none());
    // Its holder is still dropped (closed), which ends a suspension on FreeBSD.
    assert!(log(&fake).contains(&"closed /b".to_string()));
    assert_eq!(log(&fake).last().map(String::as_str), Some("closed /a"));
}

#[test]
fn dropping_the_set_ends_every_suspension_newest_first() {
    let fake = fake(&[], &[]);
    let set = SuspendedSet::suspend_all(&fake, TARGETS.iter(), |t| t.to_string()).unwrap();
    assert_eq!(set.len(), 3);
    drop(set);
    assert_eq!(
        log(&fake)[3..],
        ["closed /c", "closed /b", "closed /a"].map(String::from)
    );
}

#[test]
fn no_targets_is_an_empty_set() {
    let fake = fake(&[], &[]);
    let set = SuspendedSet::suspend_all(&fake, [].iter(), |t: &&str| t.to_string()).unwrap();
    assert!(set.is_empty());
    assert!(set.resume().is_empty());
    assert!(log(&fake).is_empty());
}
