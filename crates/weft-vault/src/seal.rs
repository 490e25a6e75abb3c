//! AES-256-GCM envelope encryption of one credential.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::keyring::{Keyring, MasterKey};
use crate::{SecretValues, VaultError, random_bytes};

const NONCE_LEN: usize = 12;
/// Format tag in front of every blob, so a future format can be told apart.
const FORMAT: u8 = 1;

/// What a sealed credential is bound to: decrypting it under any other binding fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Tenant id (`ten_…`).
    pub tenant: String,
    /// Workspace id (`wsp_…`).
    pub workspace: String,
    /// Credential id (`crd_…`).
    pub credential: String,
}

impl Binding {
    /// The associated data for one of the two layers.
    fn aad(&self, layer: &str) -> Vec<u8> {
        // Length-prefixed so no two different bindings give the same bytes.
        let mut out = format!("weft/{layer}/v1").into_bytes();
        for part in [&self.tenant, &self.workspace, &self.credential] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// A credential at rest: the wrapped data key and the encrypted values. Safe to store and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the master key that wraps the data key (`mk_…`).
    pub key_id: String,
    /// Format byte, nonce, and the data key encrypted with the master key.
    pub wrapped_key: Vec<u8>,
    /// Format byte, nonce, and the values encrypted with the data key.
    pub ciphertext: Vec<u8>,
}

fn encrypt(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher = Aes256Gcm::new(key.into());
    // Random 96-bit nonces: every data key encrypts one message, and a master key wraps far
    // fewer than 2^32 data keys, so collisions are out of reach.
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    let nonce = Nonce::from(nonce_bytes);
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Random("AES-GCM refused to encrypt".into()))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(FORMAT);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn decrypt(key: &[u8; 32], blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if blob.len() < 1 + NONCE_LEN + 16 || blob[0] != FORMAT {
        return Err(VaultError::Tampered);
    }
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(&blob[1..1 + NONCE_LEN]);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: &blob[1 + NONCE_LEN..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Tampered)
}

/// Seals `values` under `binding` with a new data key wrapped by `master`.
pub(crate) fn seal(
    master: &MasterKey,
    binding: &Binding,
    values: &SecretValues,
) -> Result<Sealed, VaultError> {
    let data_key = Zeroizing::new(random_bytes::<32>()?);
    let ciphertext = encrypt(&data_key, &values.to_plaintext(), &binding.aad("data"))?;
    let wrapped_key = encrypt(master.bytes(), data_key.as_ref(), &binding.aad("dek"))?;
    Ok(Sealed {
        key_id: master.id().to_string(),
        wrapped_key,
        ciphertext,
    })
}

/// The data key of `sealed`, unwrapped with the master key it names.
fn unwrap_key(
    ring: &Keyring,
    binding: &Binding,
    sealed: &Sealed,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let master = ring
        .get(&sealed.key_id)
        .ok_or_else(|| VaultError::UnknownKey(sealed.key_id.clone()))?;
    let raw = decrypt(master.bytes(), &sealed.wrapped_key, &binding.aad("dek"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return Err(VaultError::Tampered);
    }
    key.copy_from_slice(&raw);
    Ok(key)
}

/// Opens a sealed credential.
pub(crate) fn open(
    ring: &Keyring,
    binding: &Binding,
    sealed: &Sealed,
) -> Result<SecretValues, VaultError> {
    let key = unwrap_key(ring, binding, sealed)?;
    let plain = decrypt(&key, &sealed.ciphertext, &binding.aad("data"))?;
    SecretValues::from_plaintext(&plain)
}

/// The same credential with its data key wrapped by `ring`'s primary key; `None` when it
/// already is. The values' ciphertext is not touched.
pub(crate) fn rewrap(
    ring: &Keyring,
    binding: &Binding,
    sealed: &Sealed,
) -> Result<Option<Sealed>, VaultError> {
    let primary = ring.primary();
    if sealed.key_id == primary.id() {
        return Ok(None);
    }
    let key = unwrap_key(ring, binding, sealed)?;
    let wrapped_key = encrypt(primary.bytes(), key.as_ref(), &binding.aad("dek"))?;
    Ok(Some(Sealed {
        key_id: primary.id().to_string(),
        wrapped_key,
        ciphertext: sealed.ciphertext.clone(),
    }))
}
