//! The upstream's circuit breaker: after the upstream fails, questions stop
//! going to it for a while, so a pulled cable costs one timeout, then none.
//!
//! - **Closed**: questions may go upstream. An unreachable upstream (no
//!   connection, no first token in time) opens the breaker at once: the
//!   next question would only wait the same timeout. Errors the upstream
//!   answers with (5xx, 429, a garbled stream) open it after
//!   `failures_to_open` in a row.
//! - **Open** for `open_for`: everything is answered locally.
//! - **Half-open**: once `open_for` has passed, the next question that
//!   would go upstream is still answered locally, and starts one probe in
//!   the background (the upstream's model list). Its success closes the
//!   breaker; its failure opens it again. Customers never wait on a probe.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::time::{Duration, Instant};

/// How a call to the upstream went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection, or nothing within the deadline: the link is down.
    Unreachable,
    /// The upstream answered, with an error or a stream it could not finish.
    Error,
}

/// The breaker's state, as `/metrics` shows it (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// What the breaker lets a question do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go upstream.
    Allow,
    /// Stay local.
    Deny,
    /// Stay local, and start the one probe (the caller reports its outcome
    /// with [`Breaker::probe_result`]).
    DenyAndProbe,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    consecutive_errors: u32,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    Probing,
}

impl Breaker {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            open_for,
            consecutive_errors: 0,
            state: State::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::Probing => BreakerState::HalfOpen,
        }
    }

    /// Whether a question may go upstream at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Allow,
            State::Open { until } if now >= until => {
                self.state = State::Probing;
                Admission::DenyAndProbe
            }
            State::Open { .. } | State::Probing => Admission::Deny,
        }
    }

    /// An upstream answer finished.
    pub fn success(&mut self) {
        self.consecutive_errors = 0;
        self.state = State::Closed;
    }

    /// An upstream call failed at `now`.
    pub fn failure(&mut self, kind: FailureKind, now: Instant) {
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
        if kind == FailureKind::Unreachable || self.consecutive_errors >= self.failures_to_open {
            self.open(now);
        }
    }

    /// The probe started by [`Admission::DenyAndProbe`] ended.
    pub fn probe_result(&mut self, healthy: bool, now: Instant) {
        if healthy {
            self.success();
        } else {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.open_for,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(30);

    #[test]
    fn an_unreachable_upstream_opens_at_once_and_errors_after_a_run() {
        let t = Instant::now();
        let mut b = Breaker::new(3, OPEN);
        b.failure(FailureKind::Error, t);
        b.failure(FailureKind::Error, t);
        assert_eq!(b.admit(t), Admission::Allow, "two errors in a row");
        b.success();
        b.failure(FailureKind::Error, t);
        b.failure(FailureKind::Error, t);
        assert_eq!(b.admit(t), Admission::Allow, "a success reset the run");
        b.failure(FailureKind::Error, t);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t), Admission::Deny);

        let mut b = Breaker::new(3, OPEN);
        b.failure(FailureKind::Unreachable, t);
        assert_eq!(b.admit(t + Duration::from_secs(1)), Admission::Deny);
    }

    #[test]
    fn after_the_open_period_one_probe_runs_and_decides() {
        let t = Instant::now();
        let mut b = Breaker::new(3, OPEN);
        b.failure(FailureKind::Unreachable, t);
        let later = t + OPEN;
        assert_eq!(b.admit(later), Admission::DenyAndProbe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Deny, "one probe at a time");
        b.probe_result(false, later);
        assert_eq!(b.admit(later + Duration::from_secs(1)), Admission::Deny);
        let again = later + OPEN;
        assert_eq!(b.admit(again), Admission::DenyAndProbe);
        b.probe_result(true, again);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(again), Admission::Allow);
    }
}
