//! Plan-limit arithmetic and errors shared by both backends, so both refuse in the same words.

use weft_types::Millis;

use crate::StoreError;

/// `YYYY-MM` (UTC) of a time: the period of the monthly run quota.
pub(crate) fn month_of(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m")
        .to_string()
}

/// Seconds from `ms` to the start of the next UTC month.
pub(crate) fn secs_to_next_month(ms: Millis) -> u64 {
    use chrono::Datelike;
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| ((n.and_utc().timestamp_millis() - ms).max(0) / 1000) as u64)
        .unwrap_or(3600)
}

/// The monthly run limit is reached.
pub(crate) fn runs_exceeded(runs: i64, now: Millis) -> StoreError {
    StoreError::Quota {
        limit: "runs_per_month",
        detail: format!(
            "the tenant has started {runs} runs this month, its plan's limit; the count resets at the start of next month (UTC), or raise the plan's runs_per_month"
        ),
        retry_after: Some(secs_to_next_month(now)),
    }
}

/// The stored-data limit would be passed.
pub(crate) fn bytes_exceeded(stored: i64, limit: i64) -> StoreError {
    StoreError::Quota {
        limit: "stored_bytes",
        detail: format!(
            "the tenant stores {stored} bytes of run data and its plan allows {limit}; delete old runs or raise the plan's stored_bytes"
        ),
        retry_after: None,
    }
}

/// The active-flow limit is reached.
pub(crate) fn flows_exceeded(active: i64) -> StoreError {
    StoreError::Quota {
        limit: "active_flows",
        detail: format!(
            "the tenant has {active} published flows, its plan's limit; save this one as a draft, delete a flow, or raise the plan's active_flows"
        ),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_their_ends() {
        // 2026-12-31T23:59:00Z
        let t = 1_798_761_540_000;
        assert_eq!(month_of(t), "2026-12");
        assert_eq!(secs_to_next_month(t), 60);
        assert_eq!(month_of(t + 60_000), "2027-01");
    }
}
