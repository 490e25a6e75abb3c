//! The vault: envelope encryption of credentials, master keys and their rotation, and the
//! [`Secret`] type that keeps plaintext out of logs.
//!
//! A credential's values are encrypted with a fresh random 256-bit data key (AES-256-GCM); the
//! data key is encrypted ("wrapped") with the primary master key. Both encryptions bind the
//! tenant, workspace and credential ids as associated data, so a sealed row copied to another
//! credential or tenant does not open. Rotating the master key re-wraps data keys only.
//!
//! This crate does no I/O except reading and writing the master key file ([`KeySource`]).

mod keyring;
mod redact;
mod seal;

pub use keyring::{KeySource, Keyring, MasterKey, Vault};
pub use redact::{MIN_MASKED_LEN, Redactor, mask_text};
pub use seal::{Binding, Sealed};

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// Why the vault could not do what was asked. Messages never contain key material or secrets.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key text is not a valid key list.
    #[error("invalid master key: {0}")]
    BadKey(String),
    /// The master key file could not be read or written.
    #[error("master key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A credential was sealed with a master key this process does not have.
    #[error(
        "the credential was sealed with master key {0}, which this process does not have; start it with the same master key (WEFT_MASTER_KEY or the key file) as the process that stored it"
    )]
    UnknownKey(String),
    /// Decryption failed: wrong key, tampered row, or a row moved to another credential.
    #[error(
        "the credential could not be decrypted: it was changed in the database or belongs to another credential; set it again"
    )]
    Tampered,
    /// The process has no master key configured.
    #[error(
        "no master key is configured: start Weft with WEFT_MASTER_KEY or --master-key-file (the embedded default creates one in the data dir)"
    )]
    NoKey,
    /// The operating system's random generator failed.
    #[error("the random number generator failed: {0}")]
    Random(String),
}

/// A secret string: never printed, zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a plaintext value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(Zeroizing::new(s.into()))
    }

    /// The plaintext, for the one place that must use it (an outbound header, a signature check).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The decrypted fields of a credential, by name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(BTreeMap<String, Secret>);

impl SecretValues {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field.
    pub fn insert(&mut self, name: impl Into<String>, value: Secret) {
        self.0.insert(name.into(), value);
    }

    /// Removes a field.
    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// A field, if set.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// Field names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Every value, for redaction.
    pub fn values(&self) -> impl Iterator<Item = &Secret> {
        self.0.values()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The plaintext serialization that gets sealed: a JSON object of strings.
    fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        let m: BTreeMap<&str, &str> = self
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        // A map of strings always serializes.
        Zeroizing::new(serde_json::to_vec(&m).unwrap_or_default())
    }

    fn from_plaintext(bytes: &[u8]) -> Result<Self, VaultError> {
        let m: BTreeMap<String, String> =
            serde_json::from_slice(bytes).map_err(|_| VaultError::Tampered)?;
        Ok(SecretValues(
            m.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
        ))
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[redacted]")))
            .finish()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(b)
}
