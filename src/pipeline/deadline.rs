//! A time limit for one preparation, checked between the steps and inside the long
//! decode loops (JPEG scanlines, PNG rows).
//!
//! The edge must answer inside CloudFront's 30 s origin timeout; a legal but pathological
//! source (a 76 MP JPEG asked for as a 4096×4096 PNG) can take seconds. Checking only at
//! the end would let such a render run on past the deadline, holding the CPU and the
//! response; checking inside the decode stops it within one batch of rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::PipelineError;

/// Rows decoded between two checks of the clock: a read of the clock costs ~20 ns, a
/// batch of rows microseconds to milliseconds, so the check is free and still prompt.
pub const ROWS_PER_CHECK: u32 = 16;

/// When a preparation must stop, if ever.
#[derive(Debug, Clone)]
pub struct Deadline {
    started: Instant,
    at: Option<Instant>,
    /// Checks that pass before it expires, whatever the clock says: a deterministic
    /// deadline for tests and fuzzing (time-based tests are flaky on a loaded machine).
    checks_left: Option<Arc<AtomicU64>>,
}

impl Deadline {
    /// No limit (the worker, `render`, tests): the checks never fail.
    pub fn none() -> Self {
        Deadline {
            started: Instant::now(),
            at: None,
            checks_left: None,
        }
    }

    /// Stop at `at`.
    pub fn at(at: Instant) -> Self {
        Deadline {
            started: Instant::now(),
            at: Some(at),
            checks_left: None,
        }
    }

    /// Expires at the check after `checks` passing ones, whatever the time: lets a test
    /// stop a render inside a given step on any machine.
    pub fn after_checks(checks: u64) -> Self {
        Deadline {
            started: Instant::now(),
            at: None,
            checks_left: Some(Arc::new(AtomicU64::new(checks))),
        }
    }

    /// The instant, if there is one (for the encode ladder that runs after preparation).
    pub fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// Whether the deadline has passed (counts as a check for [`Deadline::after_checks`]).
    pub fn passed(&self) -> bool {
        if let Some(left) = &self.checks_left {
            let before =
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            return before.is_err();
        }
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// `Err(DeadlineExceeded)` naming `step` once the deadline has passed.
    pub fn check(&self, step: &'static str) -> Result<(), PipelineError> {
        if !self.passed() {
            return Ok(());
        }
        let elapsed = self.started.elapsed();
        Err(PipelineError::DeadlineExceeded {
            step,
            elapsed,
            limit: self
                .at
                .map_or(elapsed, |at| at.saturating_duration_since(self.started)),
        })
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_deadline_never_fails_and_a_past_one_names_the_step() {
        assert!(Deadline::none().check("load").is_ok());
        assert!(!Deadline::none().passed());
        let future = Deadline::at(Instant::now() + Duration::from_secs(3600));
        assert!(future.check("resize").is_ok());
        let past = Deadline::at(Instant::now());
        assert!(past.passed());
        let counted = Deadline::after_checks(2);
        assert!(counted.check("load").is_ok());
        assert!(
            counted.clone().check("load").is_ok(),
            "clones share the count"
        );
        assert!(counted.check("resize").is_err());
        assert!(counted.check("resize").is_err(), "stays expired");
        match past.check("orient") {
            Err(PipelineError::DeadlineExceeded { step, .. }) => assert_eq!(step, "orient"),
            other => panic!("{other:?}"),
        }
    }
}
