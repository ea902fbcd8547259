//! Events of the control plane: what the rotation engine (and the agent around it) did, for
//! `docker dso watch`, the `/v1/events` stream and the logs.
//!
//! An event carries names only (services, routes, container names, steps, reasons): never a
//! secret value, so every event may be printed or sent to any subscriber. Events go out on a
//! tokio broadcast channel: a slow subscriber loses old events (and sees a `Lagged` error)
//! instead of slowing a rotation down.

use serde::Serialize;

/// Capacity of the event channel a caller usually creates ([`channel`]).
pub const EVENT_CAPACITY: usize = 1024;

/// One event. Serialised as `{"type": "rotation_started", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A rotation of a service began.
    RotationStarted {
        /// `project/service`.
        service: String,
        /// Why (e.g. `manual`, `secret changed: dso://app/db`).
        reason: String,
        /// The strategy that runs (after stateful safety, see `strategy_changed`).
        strategy: String,
    },
    /// The strategy was changed before the rotation began (stateful safety).
    StrategyChanged {
        /// `project/service`.
        service: String,
        /// The labelled strategy.
        from: String,
        /// The strategy used.
        to: String,
        /// Why.
        reason: String,
    },
    /// A journaled step is about to be taken.
    RotationStep {
        /// `project/service`.
        service: String,
        /// Step name (see `docs/rotation.md`).
        step: String,
    },
    /// A rotation completed.
    RotationFinished {
        /// `project/service`.
        service: String,
        /// The strategy that ran.
        strategy: String,
        /// From the start of the rotation to its end.
        millis: u64,
    },
    /// A rotation failed at a step.
    RotationFailed {
        /// `project/service`.
        service: String,
        /// The step that failed.
        step: String,
        /// The error chain (names only).
        error: String,
    },
    /// A failed or interrupted rotation was undone: the old container keeps serving.
    RolledBack {
        /// `project/service`.
        service: String,
        /// Why.
        reason: String,
    },
    /// A proxy route now points to a new upstream set.
    RouteSwapped {
        /// Route name.
        route: String,
        /// The route's generation after the swap.
        generation: u64,
        /// Clients that were parked in hold and are now connected to the new upstream.
        released: u64,
    },
    /// A route was put into hold (new clients wait for the new upstream).
    RouteHeld {
        /// Route name.
        route: String,
    },
    /// Old generations of a route were drained.
    Drained {
        /// Route name.
        route: String,
        /// Connections that ended on their own.
        ended: u64,
        /// Connections cut at the deadline.
        cut: u64,
    },
    /// The old container could not be stopped or removed after the swap (not undone).
    CleanupFailed {
        /// `project/service`.
        service: String,
        /// Container name.
        container: String,
        /// The error chain.
        error: String,
    },
    /// Secret files were rewritten and the container signalled (`signal` strategy).
    Signalled {
        /// `project/service`.
        service: String,
        /// Container name.
        container: String,
        /// Signal name.
        signal: String,
    },
    /// Strategy `none`: the change was seen, nothing was restarted.
    NothingToDo {
        /// `project/service`.
        service: String,
        /// Why.
        reason: String,
    },
    /// A managed container that (re)appeared got its files and route back.
    ContainerRestored {
        /// `project/service`.
        service: String,
        /// Container name.
        container: String,
    },
    /// An unfinished rotation found in the journal was completed or rolled back.
    Recovered {
        /// `project/service`.
        service: String,
        /// `completed` or `rolled back`.
        outcome: String,
        /// The last journaled step.
        step: String,
    },
}

/// The sending side every part of the control plane publishes on.
pub type EventSender = tokio::sync::broadcast::Sender<Event>;

/// A new event channel with [`EVENT_CAPACITY`].
pub fn channel() -> EventSender {
    tokio::sync::broadcast::channel(EVENT_CAPACITY).0
}

/// Sends `event`; having no subscriber is not an error.
pub fn emit(events: &EventSender, event: Event) {
    let _ = events.send(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_a_type_tag() {
        let event = Event::RouteSwapped {
            route: "p.s.80".into(),
            generation: 3,
            released: 2,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "route_swapped", "route": "p.s.80", "generation": 3, "released": 2
            })
        );
    }
}
