//! A fixed-rate schedule: event `i` is due `i / rate` seconds after the start.
//!
//! Both the connection ramp and the publisher use it. The due times are
//! absolute, computed from the start instant with integer arithmetic, so a
//! late tick never shifts the rest of the run: the caller catches up by
//! releasing everything that is already due, and the offered rate over the
//! whole run is exact. This module only does arithmetic; it never sleeps.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate: u64,
    total: u64,
}

impl Schedule {
    /// `total` events at `rate` per second. A rate of 0 is treated as 1 so the
    /// schedule always ends.
    pub fn new(rate: u64, total: u64) -> Self {
        Self {
            rate: rate.max(1),
            total,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// When event `index` is due, relative to the start: the first whole
    /// nanosecond at which `due_by` releases it (hence rounded up).
    pub fn due_at(&self, index: u64) -> Duration {
        let nanos = (u128::from(index) * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many events are due `elapsed` after the start (event 0 is due at
    /// once), never more than the total.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let due = elapsed.as_nanos() * u128::from(self.rate) / NANOS_PER_SEC + 1;
        u64::try_from(due).map_or(self.total, |due| due.min(self.total))
    }

    /// When the last event is due: the nominal length of the run.
    pub fn last_due(&self) -> Duration {
        self.due_at(self.total.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_due_immediately() {
        let s = Schedule::new(1000, 10);
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_at(0), Duration::ZERO);
    }

    #[test]
    fn one_second_releases_exactly_rate_more_events() {
        let s = Schedule::new(1000, 1_000_000);
        for second in 0..5u64 {
            let before = s.due_by(Duration::from_secs(second));
            let after = s.due_by(Duration::from_secs(second + 1));
            assert_eq!(after - before, 1000);
        }
    }

    #[test]
    fn an_event_is_due_exactly_at_its_due_time_and_not_a_nanosecond_before() {
        let s = Schedule::new(3, 100);
        for i in 1..100 {
            let at = s.due_at(i);
            assert_eq!(s.due_by(at), i + 1, "event {i} at {at:?}");
            assert_eq!(s.due_by(at - Duration::from_nanos(1)), i, "event {i}");
        }
    }

    #[test]
    fn the_schedule_never_releases_more_than_the_total() {
        let s = Schedule::new(1000, 30_000);
        assert_eq!(s.due_by(Duration::from_secs(3600)), 30_000);
        assert_eq!(s.last_due(), Duration::from_millis(29_999));
        assert_eq!(s.due_by(s.last_due()), 30_000);
    }

    #[test]
    fn a_late_caller_catches_up_without_shifting_later_events() {
        let s = Schedule::new(100, 1000);
        // A caller that wakes 250 ms late gets the 25 overdue events at once,
        // and event 26 is still due at 260 ms.
        assert_eq!(s.due_by(Duration::from_millis(250)), 26);
        assert_eq!(s.due_at(26), Duration::from_millis(260));
    }

    #[test]
    fn an_empty_schedule_releases_nothing() {
        assert_eq!(Schedule::new(10, 0).due_by(Duration::from_secs(5)), 0);
    }

    #[test]
    fn a_zero_rate_is_treated_as_one_per_second() {
        let s = Schedule::new(0, 5);
        assert_eq!(s.due_at(2), Duration::from_secs(2));
    }
}
