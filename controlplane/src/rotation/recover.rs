//! What to do with an unfinished rotation found in the journal: the decision table, kept pure
//! so every row is unit-tested, and applied by `Engine::recover`.
//!
//! Before the route switch nothing a client sees has changed, so the rotation is undone; from
//! the switch on the new container may already serve, so the rotation is completed. When the
//! container that the rule would keep is gone (removed by hand), the other one is kept
//! instead: the end state always has exactly one container, never none.

use crate::journal::Step;

/// What recovery does with one journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep the old container: remove the new one, start the old one, route to it.
    RollBack,
    /// Keep the new one: start it, route to it, remove the old one, give it the name.
    Complete,
    /// Neither container exists: only the journal is removed, and an error reported.
    Lost,
}

/// The decision for the furthest journaled `step`, given which containers exist now.
pub fn decide(step: Step, old_exists: bool, new_exists: bool) -> Decision {
    match (step.is_committed(), old_exists, new_exists) {
        (_, false, false) => Decision::Lost,
        (false, true, _) => Decision::RollBack,
        (false, false, true) => Decision::Complete,
        (true, _, true) => Decision::Complete,
        (true, true, false) => Decision::RollBack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;

    #[test]
    fn before_the_switch_roll_back_after_it_complete() {
        for strategy in [Strategy::Rolling, Strategy::Restart] {
            for &step in Step::sequence(strategy) {
                let want = if step >= Step::SwitchRoute {
                    Decision::Complete
                } else {
                    Decision::RollBack
                };
                assert_eq!(decide(step, true, true), want, "{strategy:?} {step}");
            }
        }
    }

    #[test]
    fn the_survivor_is_kept_when_the_other_is_gone() {
        // Crash before the new container was created: only the old one exists.
        assert_eq!(decide(Step::Create, true, false), Decision::RollBack);
        // After the old one was removed: only the new one exists.
        assert_eq!(decide(Step::Rename, false, true), Decision::Complete);
        // Someone removed the old one by hand before the switch: keep the new one.
        assert_eq!(decide(Step::WaitHealthy, false, true), Decision::Complete);
        // Someone removed the new one after the switch: the old one serves again.
        assert_eq!(decide(Step::Drain, true, false), Decision::RollBack);
        assert_eq!(decide(Step::Begin, false, false), Decision::Lost);
    }
}
