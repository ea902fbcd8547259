//! Coalescing: changes of several secrets that land within a short window (default 2 s) become
//! one rotation per service, so a service using a user/password pair rotates once, with both
//! new values.
//!
//! Pure logic over caller-supplied instants. The window opens at the first change for a
//! service and is not extended by later ones, so a secret that changes constantly cannot
//! postpone a rotation forever.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// Default coalescing window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(2);

/// Changes waiting for their window to close, per service.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    pending: BTreeMap<String, Pending>,
}

#[derive(Debug)]
struct Pending {
    due: Instant,
    secrets: BTreeSet<String>,
}

/// A service whose window closed, with the secrets (reference texts) that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// `project/service`.
    pub service: String,
    /// The changed references, sorted.
    pub secrets: BTreeSet<String>,
}

impl Coalescer {
    /// An empty coalescer with `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            pending: BTreeMap::new(),
        }
    }

    /// Records that `secret` of `service` changed at `now`.
    pub fn add(&mut self, service: &str, secret: &str, now: Instant) {
        let window = self.window;
        self.pending
            .entry(service.to_owned())
            .or_insert_with(|| Pending {
                due: now + window,
                secrets: BTreeSet::new(),
            })
            .secrets
            .insert(secret.to_owned());
    }

    /// Takes every service whose window has closed at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Due> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(s, _)| s.clone())
            .collect();
        due.into_iter()
            .filter_map(|service| {
                self.pending.remove(&service).map(|p| Due {
                    service,
                    secrets: p.secrets,
                })
            })
            .collect()
    }

    /// When the next window closes.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    /// Services with changes waiting, for the status.
    pub fn waiting(&self) -> Vec<String> {
        self.pending.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_changes_in_the_window_give_one_rotation_with_both() {
        let start = Instant::now();
        let mut c = Coalescer::new(DEFAULT_WINDOW);
        c.add("p/db", "dso://p/user", start);
        c.add(
            "p/db",
            "dso://p/password",
            start + Duration::from_millis(1500),
        );
        assert_eq!(c.take_due(start + Duration::from_millis(1999)), vec![]);
        assert_eq!(c.next_due(), Some(start + DEFAULT_WINDOW));
        let due = c.take_due(start + DEFAULT_WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].service, "p/db");
        assert_eq!(
            due[0].secrets,
            BTreeSet::from(["dso://p/password".into(), "dso://p/user".into()])
        );
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn a_later_change_does_not_extend_the_window() {
        let start = Instant::now();
        let mut c = Coalescer::new(DEFAULT_WINDOW);
        c.add("p/a", "dso://x", start);
        c.add("p/a", "dso://x", start + Duration::from_millis(1900));
        assert_eq!(c.take_due(start + DEFAULT_WINDOW).len(), 1);
    }

    #[test]
    fn services_have_their_own_windows() {
        let start = Instant::now();
        let mut c = Coalescer::new(DEFAULT_WINDOW);
        c.add("p/a", "dso://x", start);
        c.add("p/b", "dso://x", start + Duration::from_secs(1));
        let first = c.take_due(start + DEFAULT_WINDOW);
        assert_eq!(
            first.iter().map(|d| d.service.as_str()).collect::<Vec<_>>(),
            ["p/a"]
        );
        assert_eq!(c.waiting(), ["p/b"]);
        assert_eq!(c.take_due(start + Duration::from_secs(3)).len(), 1);
    }
}
