//! Typed, prefixed ids (`run_…`, `flw_…`): a run id can never be passed where a flow id is expected.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A string that is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind} id (expected '{prefix}_' followed by 32 hex digits)")]
pub struct IdError {
    /// What kind of id was expected.
    pub kind: &'static str,
    /// Its prefix.
    pub prefix: &'static str,
    /// The rejected text (truncated).
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal, $kind:literal, $gen:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh id.
            pub fn new() -> Self {
                Self(Uuid::$gen())
            }
            /// The id's prefix, e.g. `run`.
            pub const PREFIX: &'static str = $prefix;
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = || IdError { kind: $kind, prefix: $prefix, value: s.chars().take(80).collect() };
                let rest = s.strip_prefix(concat!($prefix, "_")).ok_or_else(err)?;
                if rest.len() != 32 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err());
                }
                Uuid::parse_str(rest).map(Self).map_err(|_| err())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(/// A tenant (organization).
    TenantId, "ten", "tenant", now_v7);
typed_id!(/// A workspace inside a tenant.
    WorkspaceId, "wsp", "workspace", now_v7);
typed_id!(/// A flow.
    FlowId, "flw", "flow", now_v7);
typed_id!(/// One run of a flow version; time-ordered, so ids sort by creation.
    RunId, "run", "run", now_v7);
typed_id!(/// A user.
    UserId, "usr", "user", now_v7);
typed_id!(/// An API key (the public part; the secret is separate).
    KeyId, "key", "API key", now_v7);
typed_id!(/// A credential (its values are sealed by the vault).
    CredentialId, "crd", "credential", now_v7);
typed_id!(/// A webhook trigger's unguessable address: fully random, never time-ordered.
    HookId, "hk", "hook", new_v4);

/// A random secret of 32 bytes from the OS generator, as 64 lowercase hex digits.
pub fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_wrong_kind() {
        let r = RunId::new();
        let s = r.to_string();
        assert!(s.starts_with("run_"));
        assert_eq!(s.parse::<RunId>(), Ok(r));
        assert!(s.parse::<FlowId>().is_err());
        assert!("run_xyz".parse::<RunId>().is_err());
        assert!("run_".parse::<RunId>().is_err());
        assert!(
            "run_0123456789abcdef0123456789abcdeg"
                .parse::<RunId>()
                .is_err()
        );
        assert!(
            "run_0123456789abcdef0123456789abcdef"
                .parse::<RunId>()
                .is_ok()
        );
    }

    #[test]
    fn run_ids_sort_by_creation() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(a.0 < b.0);
    }
}
