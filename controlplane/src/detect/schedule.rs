//! When to check one secret next: the watch interval with ±10 % jitter, ×1.5 back-off while
//! nothing changes (up to 4× the interval), and exponential back-off on provider errors.
//!
//! Pure logic: the caller supplies the outcome of each check and a random number, so every
//! rule is unit-tested without clocks. A provider error is never a change: it only delays
//! the next check, and the last known good fingerprint stays in place.

use std::time::Duration;

/// Growth of the interval after a check that found no change.
pub const UNCHANGED_FACTOR: f64 = 1.5;
/// Longest quiet interval, as a multiple of the configured one.
pub const MAX_FACTOR: u32 = 4;
/// First delay after a provider error; doubled on each further error.
pub const ERROR_BACKOFF_START: Duration = Duration::from_secs(5);
/// Jitter applied to every delay: ±10 %.
pub const JITTER: f64 = 0.10;

/// What one check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The value's fingerprint differs from the last one seen.
    Changed,
    /// Same fingerprint.
    Unchanged,
    /// The provider could not answer.
    Failed,
}

/// The check schedule of one secret.
#[derive(Clone, Debug)]
pub struct Schedule {
    base: Duration,
    /// Interval used after the last successful check (grows while nothing changes).
    quiet: Duration,
    /// Delay after the last failed check; `None` after a success.
    error: Option<Duration>,
}

impl Schedule {
    /// A schedule around the configured watch interval.
    pub fn new(base: Duration) -> Self {
        Self {
            base,
            quiet: base,
            error: None,
        }
    }

    /// Records `outcome` and returns the delay until the next check, before jitter.
    pub fn record(&mut self, outcome: Outcome) -> Duration {
        let max = self.base * MAX_FACTOR;
        match outcome {
            Outcome::Changed => {
                self.quiet = self.base;
                self.error = None;
                self.quiet
            }
            Outcome::Unchanged => {
                self.error = None;
                self.quiet = self.quiet.mul_f64(UNCHANGED_FACTOR).min(max);
                self.quiet
            }
            Outcome::Failed => {
                // Errors grow from a short start so a brief outage heals fast, but never
                // poll faster than the configured interval would.
                let next = match self.error {
                    None => ERROR_BACKOFF_START.min(self.base),
                    Some(previous) => (previous * 2).min(max),
                };
                self.error = Some(next);
                next
            }
        }
    }

    /// `delay` with jitter, for a uniform `random` in `[0, 1)`.
    pub fn jittered(delay: Duration, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        delay.mul_f64(1.0 - JITTER + 2.0 * JITTER * random)
    }

    /// The configured interval.
    pub fn base(&self) -> Duration {
        self.base
    }
}

/// A uniform random number in `[0, 1)` from the OS; 0.5 (no jitter) if it cannot be read.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(60);

    #[test]
    fn quiet_checks_back_off_by_half_up_to_four_times() {
        let mut schedule = Schedule::new(BASE);
        assert_eq!(schedule.record(Outcome::Unchanged), Duration::from_secs(90));
        assert_eq!(
            schedule.record(Outcome::Unchanged),
            Duration::from_secs(135)
        );
        assert_eq!(
            schedule.record(Outcome::Unchanged),
            Duration::from_millis(202_500)
        );
        for _ in 0..10 {
            schedule.record(Outcome::Unchanged);
        }
        assert_eq!(schedule.record(Outcome::Unchanged), BASE * 4);
    }

    #[test]
    fn a_change_resets_to_the_interval() {
        let mut schedule = Schedule::new(BASE);
        for _ in 0..5 {
            schedule.record(Outcome::Unchanged);
        }
        assert_eq!(schedule.record(Outcome::Changed), BASE);
        assert_eq!(schedule.record(Outcome::Unchanged), Duration::from_secs(90));
    }

    #[test]
    fn errors_back_off_exponentially_and_keep_the_quiet_interval() {
        let mut schedule = Schedule::new(BASE);
        schedule.record(Outcome::Unchanged);
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(5));
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(10));
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(20));
        for _ in 0..10 {
            schedule.record(Outcome::Failed);
        }
        assert_eq!(schedule.record(Outcome::Failed), BASE * 4);

        // A success ends the error back-off; the quiet interval goes on from where it was.
        assert_eq!(
            schedule.record(Outcome::Unchanged),
            Duration::from_secs(135)
        );
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(5));
    }

    #[test]
    fn error_backoff_never_starts_below_a_short_interval() {
        let mut schedule = Schedule::new(Duration::from_secs(2));
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(2));
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(4));
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(8));
        assert_eq!(schedule.record(Outcome::Failed), Duration::from_secs(8));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(Schedule::jittered(BASE, 0.0), Duration::from_secs(54));
        assert_eq!(Schedule::jittered(BASE, 0.5), BASE);
        assert!(Schedule::jittered(BASE, 0.999_999) <= Duration::from_secs(66));
        for _ in 0..1000 {
            let d = Schedule::jittered(BASE, random_unit());
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }
}
