//! Retry schedule and error classes (DESIGN "Errors"): recoverable errors back off
//! 1, 2, 4, 8, 10 units, then every 30 units (a unit is a minute in service, seconds in tests);
//! non-recoverable errors stop the directory in Critical until an operator acts.

use std::time::Duration;

/// Back-off steps in units.
const STEPS: [u32; 5] = [1, 2, 4, 8, 10];
/// Interval after the steps are used up, in units.
const STEADY: u32 = 30;

/// Delay before retry number `attempt` (1 = first retry).
pub fn delay(attempt: u32, unit: Duration) -> Duration {
    let units = STEPS
        .get(attempt.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(STEADY);
    unit * units
}

pub use crate::store::error::ErrorClass;

/// An error that waiting cannot fix; the message says what the operator must do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Classifies an error by what caused it: a [`Fatal`] or the class of the typed store
/// error in its chain; anything else (network, local I/O, a tracker that is restarting) is
/// worth another try.
pub fn classify(err: &anyhow::Error) -> ErrorClass {
    if err.chain().any(|c| c.downcast_ref::<Fatal>().is_some()) {
        return ErrorClass::Fatal;
    }
    crate::store::error::store_error_in(err).map_or(ErrorClass::Recoverable, |e| e.class())
}

/// What the operator must do about a store error, when it can be told.
pub fn operator_hint(err: &anyhow::Error) -> Option<&'static str> {
    crate::store::error::store_error_in(err).and_then(|e| e.hint())
}

/// Adds the operator hint (if any) in front of an error.
pub fn with_hint(err: anyhow::Error) -> anyhow::Error {
    match operator_hint(&err) {
        Some(h) => err.context(h),
        None => err,
    }
}

/// Parses a duration like `30s`, `5m`, `15m`, `1h`, `250ms`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        anyhow::anyhow!("{s:?} is not a duration ({e}); write it like 30s, 5m, 15m or 1h")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_1_2_4_8_10_then_30() {
        let u = Duration::from_secs(1);
        let got: Vec<u64> = (1..=8).map(|a| delay(a, u).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 30, 30, 30]);
        assert_eq!(delay(1, Duration::from_secs(60)), Duration::from_secs(60));
    }

    #[test]
    fn auth_and_chain_errors_are_fatal_network_is_not() {
        let fatal = anyhow::Error::new(Fatal("broken chain".into())).context("cycle");
        assert_eq!(classify(&fatal), ErrorClass::Fatal);
        let net = anyhow::anyhow!("error sending request: connection refused");
        assert_eq!(classify(&net), ErrorClass::Recoverable);
        let auth = anyhow::Error::new(crate::store::StoreError::from_store(
            crate::store::Op::List,
            "points",
            "az://c",
            object_store::Error::Unauthenticated {
                path: "points".into(),
                source: "refused".into(),
            },
        ))
        .context("cycle");
        assert_eq!(classify(&auth), ErrorClass::Fatal);
        assert!(operator_hint(&auth).is_some_and(|h| h.contains("credentials")));
        assert!(operator_hint(&net).is_none());
        assert!(parse_duration("5m").is_ok() && parse_duration("five").is_err());
    }
}
