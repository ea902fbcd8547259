//! The work queue of rotations: at most one rotation per service runs at a time, and a request
//! that arrives while one runs is remembered (once) and runs after it, so a change is never
//! lost and never rotates twice in parallel.
//!
//! Pure state; the agent's worker drives it and runs the rotations.

use std::collections::{BTreeMap, BTreeSet};

/// Why a rotation was asked for, merged when requests wait together.
pub type Reasons = BTreeSet<String>;

/// Running and queued rotations.
#[derive(Debug, Default)]
pub struct WorkQueue {
    running: BTreeSet<String>,
    queued: BTreeMap<String, Reasons>,
}

impl WorkQueue {
    /// Asks for a rotation of `service`. Returns the reasons to start with now, or `None`
    /// when one runs already (the request waits and merges with others).
    pub fn request(&mut self, service: &str, reasons: Reasons) -> Option<Reasons> {
        if self.running.contains(service) {
            self.queued
                .entry(service.to_owned())
                .or_default()
                .extend(reasons);
            return None;
        }
        self.running.insert(service.to_owned());
        Some(reasons)
    }

    /// Marks the rotation of `service` done. Returns the reasons of a waiting request, which
    /// starts at once (the service stays running), or `None` when nothing waits.
    pub fn finish(&mut self, service: &str) -> Option<Reasons> {
        if let Some(reasons) = self.queued.remove(service) {
            return Some(reasons);
        }
        self.running.remove(service);
        None
    }

    /// Whether a rotation of `service` runs now.
    pub fn is_running(&self, service: &str) -> bool {
        self.running.contains(service)
    }

    /// Services rotating now.
    pub fn running(&self) -> Vec<String> {
        self.running.iter().cloned().collect()
    }

    /// Services with a rotation waiting for the running one.
    pub fn queued(&self) -> Vec<String> {
        self.queued.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(items: &[&str]) -> Reasons {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_request_while_running_waits_and_is_never_lost() {
        let mut q = WorkQueue::default();
        assert_eq!(q.request("p/a", reasons(&["one"])), Some(reasons(&["one"])));
        assert!(q.is_running("p/a"));
        assert_eq!(q.request("p/a", reasons(&["two"])), None);
        assert_eq!(q.request("p/a", reasons(&["three"])), None);
        assert_eq!(q.queued(), ["p/a"]);

        // The waiting requests run once, together, right after the first.
        assert_eq!(q.finish("p/a"), Some(reasons(&["three", "two"])));
        assert!(q.is_running("p/a"));
        assert_eq!(q.finish("p/a"), None);
        assert!(!q.is_running("p/a"));
    }

    #[test]
    fn services_run_independently() {
        let mut q = WorkQueue::default();
        assert!(q.request("p/a", reasons(&["x"])).is_some());
        assert!(q.request("p/b", reasons(&["x"])).is_some());
        assert_eq!(q.running(), ["p/a", "p/b"]);
        assert_eq!(q.finish("p/b"), None);
        assert_eq!(q.running(), ["p/a"]);
    }
}
