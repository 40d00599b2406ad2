//! Waiting with a deadline: the one polling loop of the tests. A deadline here is a bound on
//! a hang, never a timed assertion: it is generous, and only its expiry fails a test.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Polls `ready` until it returns true; panics naming `what` once `deadline` has passed.
/// The first polls come quickly (10 ms), later ones every 200 ms at most.
pub fn wait_until(deadline: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    wait_for(deadline, what, || if ready() { Ok(()) } else { Err("") });
}

/// Polls `probe` until it returns `Ok(value)` and returns that value; `Err(state)` means not
/// yet, and the last state seen is shown when the deadline passes (a status, a log tail).
pub fn wait_for<T, S: Display>(
    deadline: Duration,
    what: &str,
    probe: impl FnMut() -> Result<T, S>,
) -> T {
    match poll(deadline, probe) {
        Ok(v) => v,
        Err(last) => panic!("timed out after {deadline:?} waiting for {what}\n{last}"),
    }
}

/// Polls `probe` until it returns `Ok` or `deadline` passes; returns the last answer. For
/// clean-up code (a `Drop`), which must not panic.
pub fn poll<T, S>(deadline: Duration, mut probe: impl FnMut() -> Result<T, S>) -> Result<T, S> {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = probe();
        if last.is_ok() || Instant::now() >= end {
            return last;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_ready() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), "three polls", || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for never")]
    fn panics_naming_what_after_the_deadline() {
        wait_for(Duration::from_millis(30), "never", || {
            Err::<(), _>("still no")
        });
    }
}
