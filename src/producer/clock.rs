//! Time arithmetic that cannot panic: every deadline the pipeline computes goes through
//! [`later`], so no setting or clock reading can overflow an `Instant`.

use std::time::Duration;

use tokio::time::Instant;

/// About 30 years: how far "never" is when a deadline cannot be represented.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + by`, or a far-off instant if that overflows the clock.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_saturates_far_off() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(later(now, Duration::MAX) >= now + Duration::from_secs(86_400 * 365));
    }
}
