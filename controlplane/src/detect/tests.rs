//! The detector loop with an in-memory value source and a rotator that records its calls:
//! baseline, restart without changes, coalescing, queueing behind a running rotation, and
//! provider errors. Short intervals keep it fast; assertions wait on conditions with deadlines.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::resolve::ResolveError;
use crate::secret::SecretValue;

/// Values by secret path; `fail` makes every read fail.
#[derive(Default)]
struct Memory {
    values: Mutex<BTreeMap<String, Vec<u8>>>,
    fail: AtomicBool,
}

impl Memory {
    fn set(&self, path: &str, value: &[u8]) {
        lock(&self.values).insert(path.to_owned(), value.to_vec());
    }
}

impl ValueSource for Memory {
    fn resolve(&self, reference: &Reference) -> Result<SecretValue, ResolveError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(ResolveError::Missing {
                reference: reference.to_string(),
            });
        }
        lock(&self.values)
            .get(&reference.path.to_string())
            .map(|v| SecretValue::from_slice(v))
            .ok_or(ResolveError::Missing {
                reference: reference.to_string(),
            })
    }
}

/// Records (service, reason) per call; each call takes `hold`.
struct Recorder {
    calls: Mutex<Vec<(String, String)>>,
    hold: Duration,
}

impl Rotator for Recorder {
    fn rotate(&self, service: String, reason: String) -> RotationFuture {
        lock(&self.calls).push((service, reason));
        let hold = self.hold;
        Box::pin(async move {
            tokio::time::sleep(hold).await;
            Ok(())
        })
    }
}

struct Rig {
    detector: Detector,
    task: tokio::task::JoinHandle<()>,
    recorder: Arc<Recorder>,
}

const INTERVAL: Duration = Duration::from_millis(40);
const WINDOW: Duration = Duration::from_millis(150);

fn rig(dir: &std::path::Path, memory: Arc<Memory>, hold: Duration) -> Rig {
    rig_with(dir, memory, hold, INTERVAL, WINDOW)
}

/// A rig with its own interval and window; a long interval leaves only the first check (the
/// baseline) and `check_now` to run.
fn rig_with(
    dir: &std::path::Path,
    memory: Arc<Memory>,
    hold: Duration,
    interval: Duration,
    window: Duration,
) -> Rig {
    let recorder = Arc::new(Recorder {
        calls: Mutex::new(Vec::new()),
        hold,
    });
    let seen = Seen::open(dir).unwrap();
    let (detector, task) = Detector::new(seen, interval, window, memory.clone(), recorder.clone());
    let task = tokio::spawn(task.run());
    Rig {
        detector,
        task,
        recorder,
    }
}

fn services(entries: &[(&str, &[&str])]) -> Services {
    entries
        .iter()
        .map(|(s, refs)| {
            (
                (*s).to_owned(),
                refs.iter().map(|r| Reference::parse(r).unwrap()).collect(),
            )
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn calls(rig: &Rig) -> Vec<(String, String)> {
    lock(&rig.recorder.calls).clone()
}

/// The status version of the rig's first watched reference.
fn first_version(rig: &Rig) -> Option<String> {
    rig.detector
        .status()
        .references
        .first()
        .and_then(|r| r.version.clone())
}

fn checked(rig: &Rig, reference: &str) -> bool {
    rig.detector
        .status()
        .references
        .iter()
        .any(|r| r.reference == reference && r.version.is_some())
}

#[tokio::test]
async fn a_restart_with_nothing_changed_rotates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("app/pw", b"one");

    let first = rig(dir.path(), memory.clone(), Duration::ZERO);
    first
        .detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("the baseline", || checked(&first, "dso://app/pw")).await;
    first.task.abort();

    let second = rig(dir.path(), memory, Duration::ZERO);
    second
        .detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("a check", || checked(&second, "dso://app/pw")).await;
    tokio::time::sleep(INTERVAL * 5 + WINDOW).await;
    assert_eq!(calls(&second), vec![], "nothing changed, nothing rotates");
    assert_eq!(calls(&first), vec![]);
}

#[tokio::test]
async fn a_change_seen_while_the_agent_was_away_rotates_once() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("app/pw", b"one");
    let first = rig(dir.path(), memory.clone(), Duration::ZERO);
    first
        .detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("the baseline", || checked(&first, "dso://app/pw")).await;
    first.task.abort();

    memory.set("app/pw", b"two");
    let second = rig(dir.path(), memory, Duration::ZERO);
    second
        .detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("a rotation", || !calls(&second).is_empty()).await;
    tokio::time::sleep(INTERVAL * 5 + WINDOW).await;
    assert_eq!(
        calls(&second),
        vec![("p/app".into(), "secret changed: dso://app/pw".into())],
        "committed after success: later checks see no change"
    );
}

#[tokio::test]
async fn two_changes_inside_the_window_rotate_once_with_both() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("db/user", b"u1");
    memory.set("db/pw", b"p1");
    let rig = rig(dir.path(), memory.clone(), Duration::ZERO);
    rig.detector.set_services(services(&[
        ("p/db", &["dso://db/user", "dso://db/pw"]),
        ("p/web", &["dso://db/pw"]),
    ]));
    wait_for("baselines", || {
        checked(&rig, "dso://db/user") && checked(&rig, "dso://db/pw")
    })
    .await;

    memory.set("db/user", b"u2");
    memory.set("db/pw", b"p2");
    assert_eq!(rig.detector.check_now("db/user").await, 1);
    assert_eq!(rig.detector.check_now("dso://db/pw").await, 1);
    wait_for("rotations", || calls(&rig).len() >= 2).await;
    tokio::time::sleep(INTERVAL * 5 + WINDOW).await;

    let mut got = calls(&rig);
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "p/db".into(),
                "secret changed: dso://db/pw; secret changed: dso://db/user".into()
            ),
            ("p/web".into(), "secret changed: dso://db/pw".into()),
        ]
    );
}

#[tokio::test]
async fn a_change_during_a_rotation_waits_and_runs_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("app/pw", b"one");
    let rig = rig(dir.path(), memory.clone(), Duration::from_millis(600));
    rig.detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("the baseline", || checked(&rig, "dso://app/pw")).await;

    memory.set("app/pw", b"two");
    wait_for("the first rotation", || calls(&rig).len() == 1).await;
    assert!(rig.detector.busy("p/app"));

    // While it runs: a manual request and another change both wait, then run once together.
    assert_eq!(
        rig.detector.rotate(Target::Service("app".into())).await,
        vec!["p/app".to_owned()]
    );
    memory.set("app/pw", b"three");
    wait_for("the queued rotation", || calls(&rig).len() == 2).await;
    let status = rig.detector.status();
    assert!(status.rotating.contains(&"p/app".to_owned()));
    wait_for("the end", || !rig.detector.busy("p/app")).await;
    tokio::time::sleep(INTERVAL * 5 + WINDOW).await;
    let got = calls(&rig);
    assert!(got.len() <= 3, "no rotation storm: {got:?}");
    assert!(got[1].1.contains("manual"), "{got:?}");
}

#[tokio::test]
async fn provider_errors_are_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("app/pw", b"one");
    let rig = rig(dir.path(), memory.clone(), Duration::ZERO);
    rig.detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("the baseline", || checked(&rig, "dso://app/pw")).await;
    let version = rig.detector.status().references[0].version.clone();

    memory.fail.store(true, Ordering::SeqCst);
    rig.detector.check_now("app/pw").await;
    wait_for("the error", || {
        rig.detector.status().references[0].last_error.is_some()
    })
    .await;
    let status = rig.detector.status();
    assert_eq!(status.references[0].version, version, "last good kept");
    memory.fail.store(false, Ordering::SeqCst);
    rig.detector.check_now("app/pw").await;
    wait_for("recovery", || {
        rig.detector.status().references[0].last_error.is_none()
    })
    .await;
    tokio::time::sleep(WINDOW * 2).await;
    assert_eq!(calls(&rig), vec![]);
}

#[test]
fn targets_name_services_or_secrets() {
    let all = services(&[
        ("p/app", &["dso://app/pw"]),
        ("q/app", &["dsofile://app/pw"]),
        ("q/db", &["dso://db/pw#user"]),
    ]);
    assert_eq!(
        resolve_target(&all, &Target::Service("p/app".into())),
        ["p/app"]
    );
    assert_eq!(
        resolve_target(&all, &Target::Service("db".into())),
        ["q/db"]
    );
    assert!(
        resolve_target(&all, &Target::Service("app".into())).is_empty(),
        "ambiguous"
    );
    assert_eq!(
        resolve_target(&all, &Target::Secret("app/pw".into())),
        ["p/app", "q/app"]
    );
    assert_eq!(
        resolve_target(&all, &Target::Secret("db/pw".into())),
        ["q/db"]
    );
    assert!(resolve_target(&all, &Target::Secret("none".into())).is_empty());
}

/// Regression (found by a new user): a manual rotation delivers the current values, so it
/// records their fingerprints; the next check finds nothing changed and rotates nothing.
#[tokio::test]
async fn a_manual_rotation_records_what_it_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("app/pw", b"one");
    let long = Duration::from_secs(3600);
    let rig = rig_with(dir.path(), memory.clone(), Duration::ZERO, long, WINDOW);
    rig.detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("the baseline", || first_version(&rig).is_some()).await;
    let baseline = first_version(&rig);

    memory.set("app/pw", b"two");
    assert_eq!(
        rig.detector.rotate(Target::Service("p/app".into())).await,
        vec!["p/app".to_owned()]
    );
    wait_for("the manual rotation", || !calls(&rig).is_empty()).await;
    wait_for("the new version in the status", || {
        first_version(&rig).is_some_and(|v| Some(v) != baseline)
    })
    .await;
    assert_eq!(rig.detector.check_now("app/pw").await, 1);
    tokio::time::sleep(WINDOW * 3).await;
    assert_eq!(
        calls(&rig),
        vec![("p/app".to_owned(), "manual".to_owned())],
        "the check after a manual rotation found a change"
    );
    rig.task.abort();
}

/// Regression (found by an attack run): a manual rotation inside an open coalescing window
/// delivers the detected change, so the window's close starts no second rotation.
#[tokio::test]
async fn a_manual_rotation_inside_the_window_is_the_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(Memory::default());
    memory.set("app/pw", b"one");
    let (long, window) = (Duration::from_secs(3600), Duration::from_millis(400));
    let rig = rig_with(dir.path(), memory.clone(), Duration::ZERO, long, window);
    rig.detector
        .set_services(services(&[("p/app", &["dso://app/pw"])]));
    wait_for("the baseline", || first_version(&rig).is_some()).await;

    memory.set("app/pw", b"two");
    assert_eq!(rig.detector.check_now("app/pw").await, 1);
    wait_for("the coalescing window", || {
        !rig.detector.status().coalescing.is_empty()
    })
    .await;
    rig.detector.rotate(Target::Service("p/app".into())).await;
    wait_for("the manual rotation", || !calls(&rig).is_empty()).await;
    tokio::time::sleep(window * 3).await;
    assert_eq!(calls(&rig), vec![("p/app".to_owned(), "manual".to_owned())]);
    rig.task.abort();
}
