//! What both backends share about alerts: the audit entry of a rule change, the stored JSON,
//! and the de-duplication rule (what one occurrence does to its incident, and whether it notifies).

use serde_json::{Value, json};
use weft_types::{Millis, Scope};

use crate::{Actor, Audit, StoreError};

/// The audit entry of a change to alert rule `name`.
pub(crate) fn rule_audit(actor: Actor, action: &'static str, scope: &Scope, name: &str) -> Audit {
    Audit {
        actor,
        action,
        object_kind: "alert_rule",
        object_id: name.to_string(),
        workspace: Some(scope.workspace),
        detail: json!({}),
    }
}

/// A stored rule spec or notification payload.
pub(crate) fn spec_of(s: String) -> Result<Value, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("alert rule spec: {e}")))
}

/// An incident's state, as stored in `alert_incidents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Incident {
    /// Last notification (0: never).
    pub(crate) notified_at: Millis,
    /// Occurrences held back since then.
    pub(crate) suppressed: i64,
    /// Start of the counting window (rules that need N occurrences within it).
    pub(crate) window_start: Millis,
    /// Occurrences in that window.
    pub(crate) window_count: i64,
}

/// One occurrence at `now`: the new state, and `Some(held back)` when it notifies. A rule with
/// `at_least = (n, window)` notifies only once `n` occurrences fall within `window`; any
/// notification is followed by `quiet_ms` in which occurrences are only counted.
pub(crate) fn occur(
    prev: Option<Incident>,
    quiet_ms: i64,
    at_least: Option<(i64, i64)>,
    now: Millis,
) -> (Incident, Option<i64>) {
    let mut s = prev.unwrap_or_default();
    let mut due = true;
    if let Some((n, window)) = at_least {
        if prev.is_some() && now - s.window_start < window {
            s.window_count += 1;
        } else {
            s.window_start = now;
            s.window_count = 1;
        }
        due = s.window_count >= n;
    }
    if !due {
        return (s, None);
    }
    if s.notified_at > 0 && now - s.notified_at < quiet_ms {
        s.suppressed += 1;
        return (s, None);
    }
    let held = s.suppressed;
    s.notified_at = now;
    s.suppressed = 0;
    (s, Some(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notification_per_quiet_time_counting_what_was_held_back() {
        let (s, n) = occur(None, 100, None, 1_000);
        assert_eq!(n, Some(0));
        let (s, n) = occur(Some(s), 100, None, 1_050);
        assert_eq!((n, s.suppressed), (None, 1));
        let (s, n) = occur(Some(s), 100, None, 1_099);
        assert_eq!((n, s.suppressed), (None, 2));
        let (s, n) = occur(Some(s), 100, None, 1_100);
        assert_eq!((n, s.suppressed, s.notified_at), (Some(2), 0, 1_100));
    }

    #[test]
    fn a_spike_needs_n_occurrences_within_the_window() {
        let spike = Some((3, 60));
        let (s, n) = occur(None, 1_000, spike, 10);
        assert_eq!(n, None);
        let (s, n) = occur(Some(s), 1_000, spike, 20);
        assert_eq!((n, s.window_count), (None, 2));
        // The window ran out: counting starts again.
        let (s, n) = occur(Some(s), 1_000, spike, 80);
        assert_eq!((n, s.window_count, s.window_start), (None, 1, 80));
        let (s, _) = occur(Some(s), 1_000, spike, 90);
        let (s, n) = occur(Some(s), 1_000, spike, 100);
        assert_eq!(n, Some(0));
        // Still spiking within the quiet time: held back, not notified.
        let (s, _) = occur(Some(s), 1_000, spike, 101);
        let (s, n) = occur(Some(s), 1_000, spike, 102);
        assert_eq!((n, s.suppressed), (None, 2));
    }
}
