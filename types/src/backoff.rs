//! The one retry schedule every retry loop uses: capped exponential backoff with jitter.
//!
//! A pause starts at `base`, doubles after every failed attempt up to `cap`, and each wait adds
//! up to half the pause again at random, so that many callers that failed together do not
//! retry together. The randomness comes from the caller, which keeps this type deterministic
//! for tests and the model checker.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backoff {
    pause: Duration,
    cap: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            pause: base.min(cap),
            cap,
            attempts: 0,
        }
    }

    /// Records a failed attempt and returns how long to wait before the next one. `jitter` in
    /// `[0, 1]` picks the share of half the pause that is added.
    pub fn failed(&mut self, jitter: f64) -> Duration {
        self.attempts += 1;
        let extra = self.pause.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        let wait = self.pause + extra;
        self.pause = (self.pause * 2).min(self.cap);
        wait
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_at_most_half_again_of_jitter() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(20), ms(100));
        assert_eq!(b.failed(0.0), ms(20));
        assert_eq!(b.failed(1.0), ms(60));
        assert_eq!(b.failed(0.0), ms(80));
        assert_eq!(b.failed(0.0), ms(100));
        assert_eq!(b.failed(0.5), ms(125));
        assert_eq!(b.attempts(), 5);
        assert_eq!(Backoff::new(ms(500), ms(100)).failed(0.0), ms(100));
    }
}
