//! Error analytics: failed steps are counted in groups by fingerprint (flow, step, connector,
//! error class), which `GET …/errors` lists with their counts, first and last seen, a sample
//! run and a per-day trend.

use sha2::{Digest, Sha256};
use weft_types::FlowId;

/// The group of a failure: the same flow, step, connector and class are the same problem,
/// whatever the message says (it carries ids and times that differ every time).
pub fn fingerprint(flow: FlowId, step: &str, connector: &str, class: &str) -> String {
    let mut h = Sha256::new();
    for part in [flow.to_string().as_str(), step, connector, class] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn the_same_problem_has_the_same_fingerprint() {
        let f = weft_types::FlowId::new();
        let a = fingerprint(f, "post", "http", "5xx");
        assert_eq!(a, fingerprint(f, "post", "http", "5xx"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, fingerprint(f, "post", "http", "timeout"));
        assert_ne!(
            a,
            fingerprint(f, "pos", "thttp", "5xx"),
            "parts are separated"
        );
        assert_ne!(
            a,
            fingerprint(weft_types::FlowId::new(), "post", "http", "5xx")
        );
    }
}
