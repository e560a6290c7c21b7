//! Pacing: never send a mailbox more than Exchange Online allows.
//!
//! Exchange counts 30 messages a minute and 10,000 recipients a day per mailbox; going over
//! earns throttling replies and, repeated, a blocked mailbox. So we keep both budgets
//! ourselves as sliding windows and let a burst wait in the queue instead. Pure over the
//! `Instant`s it is given, so it is tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct Pacer {
    per_window: u32,
    window: Duration,
    per_day: u32,
    sent: VecDeque<Instant>,
    recipients: VecDeque<(Instant, u32)>,
    recipients_today: u32,
}

impl Pacer {
    pub fn new(per_window: u32, window: Duration, per_day: u32) -> Pacer {
        Pacer {
            per_window: per_window.max(1),
            window,
            per_day: per_day.max(1),
            sent: VecDeque::new(),
            recipients: VecDeque::new(),
            recipients_today: 0,
        }
    }

    /// Applies new limits (config reload) and keeps what was already counted.
    pub fn set_limits(&mut self, per_window: u32, window: Duration, per_day: u32) {
        self.per_window = per_window.max(1);
        self.window = window;
        self.per_day = per_day.max(1);
    }

    fn expire(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
        while let Some((t, n)) = self.recipients.front().copied() {
            if now.duration_since(t) < DAY {
                break;
            }
            self.recipients.pop_front();
            self.recipients_today -= n;
        }
    }

    /// `None` if a message to `rcpts` recipients may go now, else when to ask again.
    pub fn wait_for(&mut self, now: Instant, rcpts: u32) -> Option<Instant> {
        self.expire(now);
        if self.sent.len() as u32 >= self.per_window {
            return self.sent.front().map(|t| *t + self.window);
        }
        // A single message larger than the whole daily budget can never fit: let it go
        // when the day is empty rather than wait forever.
        let rcpts = rcpts.min(self.per_day);
        if self.recipients_today + rcpts > self.per_day {
            let mut freed = 0;
            for (t, n) in &self.recipients {
                freed += n;
                if self.recipients_today - freed + rcpts <= self.per_day {
                    return Some(*t + DAY);
                }
            }
        }
        None
    }

    /// Counts a message that is about to be sent.
    pub fn record(&mut self, now: Instant, rcpts: u32) {
        self.sent.push_back(now);
        self.recipients.push_back((now, rcpts));
        self.recipients_today += rcpts;
    }

    /// Re-times a send counted at `counted` to `done`, keeping the window sorted.
    pub fn settle(&mut self, counted: Instant, done: Instant) {
        if let Some(pos) = self.sent.iter().position(|t| *t == counted) {
            self.sent.remove(pos);
            let at = self.sent.partition_point(|t| *t <= done);
            self.sent.insert(at, done);
        }
    }

    pub fn recipients_today(&self) -> u32 {
        self.recipients_today
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_a_minute() {
        let t0 = Instant::now();
        let mut p = Pacer::new(30, Duration::from_secs(60), 10_000);
        for i in 0..30 {
            let now = t0 + Duration::from_millis(i * 10);
            assert_eq!(p.wait_for(now, 1), None);
            p.record(now, 1);
        }
        let now = t0 + Duration::from_secs(1);
        assert_eq!(p.wait_for(now, 1), Some(t0 + Duration::from_secs(60)));
        // One slot frees when the first send leaves the window.
        assert_eq!(p.wait_for(t0 + Duration::from_secs(60), 1), None);
    }

    #[test]
    fn settling_moves_a_send_to_when_it_was_done() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2, Duration::from_secs(10), 10_000);
        p.record(t0, 1);
        p.record(t0 + Duration::from_secs(1), 1);
        // The first took 5 s to reach the upstream: the window frees at 15 s, not 10 s.
        p.settle(t0, t0 + Duration::from_secs(5));
        assert_eq!(
            p.wait_for(t0 + Duration::from_secs(10), 1),
            Some(t0 + Duration::from_secs(11))
        );
        assert_eq!(p.wait_for(t0 + Duration::from_secs(11), 1), None);
    }

    #[test]
    fn daily_recipient_budget() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, Duration::from_secs(1), 100);
        p.record(t0, 60);
        p.record(t0 + Duration::from_secs(10), 30);
        assert_eq!(p.wait_for(t0 + Duration::from_secs(20), 10), None);
        assert_eq!(p.wait_for(t0 + Duration::from_secs(20), 20), Some(t0 + DAY));
        assert_eq!(p.wait_for(t0 + DAY, 20), None);
        assert_eq!(p.recipients_today(), 30);
        // Bigger than a whole day's budget: waits for an empty day, then goes.
        assert!(p.wait_for(t0 + DAY, 500).is_some());
    }
}
