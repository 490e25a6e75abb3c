//! Master keys: where they come from, which one is primary, and the [`Vault`] that uses them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::seal::{self, Binding, Sealed};
use crate::{SecretValues, VaultError, random_bytes};

/// One 256-bit master key and its public id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A key from its 32 bytes; the id is derived from them, so the same key always has the
    /// same id and no id table is needed.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"weft master key id\0");
        h.update(bytes);
        let digest = h.finalize();
        MasterKey {
            id: format!("mk_{}", hex::encode(&digest[..8])),
            key: Zeroizing::new(bytes),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, VaultError> {
        Ok(Self::from_bytes(random_bytes::<32>()?))
    }

    /// The public id (`mk_` + 16 hex digits), stored beside every data key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn encoded(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.as_ref()))
    }
}

/// The master keys a process knows; the first is primary (it wraps new data keys), the others
/// only open data keys not yet re-wrapped.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    /// Parses base64 keys of 32 bytes separated by newlines or commas; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (n, raw) in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let bytes = Zeroizing::new(STANDARD.decode(raw).map_err(|_| {
                VaultError::BadKey(format!(
                    "key {} is not base64; a master key is 32 random bytes in base64 (e.g. `head -c 32 /dev/urandom | base64`)",
                    n + 1
                ))
            })?);
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                VaultError::BadKey(format!(
                    "key {} is {} bytes long; a master key is exactly 32 bytes (44 base64 characters)",
                    n + 1,
                    bytes.len()
                ))
            })?;
            let key = MasterKey::from_bytes(arr);
            if !keys.iter().any(|k| k.id == key.id) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(VaultError::BadKey(
                "no key found; give at least one base64 key of 32 bytes".into(),
            ));
        }
        Ok(Keyring { keys })
    }

    /// A keyring of one new random key.
    pub fn generate() -> Result<Self, VaultError> {
        Ok(Keyring {
            keys: vec![MasterKey::generate()?],
        })
    }

    /// The primary key.
    pub fn primary(&self) -> &MasterKey {
        // `parse` and `generate` never build an empty ring.
        &self.keys[0]
    }

    /// Every key id, primary first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// This ring with `key` in front as the new primary.
    pub fn with_primary(&self, key: MasterKey) -> Keyring {
        let id = key.id.clone();
        let mut keys = vec![key];
        keys.extend(self.keys.iter().filter(|k| k.id != id).cloned());
        Keyring { keys }
    }

    /// This ring with only its primary key (the others retired).
    pub fn primary_only(&self) -> Keyring {
        Keyring {
            keys: vec![self.primary().clone()],
        }
    }

    /// The ring as key-file text, primary first.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::from(
            "# Weft master keys (base64, 32 bytes each). The first wraps new credentials.\n",
        ));
        for k in &self.keys {
            out.push_str(&k.encoded());
            out.push_str("  # ");
            out.push_str(&k.id);
            out.push('\n');
        }
        out
    }
}

/// Where a process's master keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding one key per line (`--master-key-file`, or `master.key` in the data dir).
    File(PathBuf),
    /// The `WEFT_MASTER_KEY` variable: keys separated by commas, primary first.
    Env(String),
}

impl KeySource {
    /// Reads the keyring.
    pub fn load(&self) -> Result<Keyring, VaultError> {
        match self {
            KeySource::Env(text) => Keyring::parse(text),
            KeySource::File(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    VaultError::KeyFile {
                        path: path.display().to_string(),
                        reason: format!("cannot read it: {e}"),
                    }
                })?);
                Keyring::parse(&text).map_err(|e| VaultError::KeyFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Reads the key file, creating it with one new key if it does not exist (the embedded
    /// default's first start). An `Env` source is only read.
    pub fn load_or_create(&self) -> Result<(Keyring, bool), VaultError> {
        if let KeySource::File(path) = self
            && !path.exists()
        {
            let ring = Keyring::generate()?;
            write_new(path, &ring.to_text())?;
            return Ok((ring, true));
        }
        Ok((self.load()?, false))
    }

    /// Replaces the key file's contents atomically and durably (rotation). Fails for `Env`.
    pub fn store(&self, ring: &Keyring) -> Result<(), VaultError> {
        match self {
            KeySource::Env(_) => Err(VaultError::BadKey(
                "the master keys come from WEFT_MASTER_KEY, which Weft cannot change; edit the variable".into(),
            )),
            KeySource::File(path) => {
                let tmp = path.with_extension("key.new");
                let _ = std::fs::remove_file(&tmp);
                write_new(&tmp, &ring.to_text())?;
                std::fs::rename(&tmp, path).map_err(|e| key_file_err(path, e))?;
                sync_dir(path)
            }
        }
    }

    /// For messages: the file path or `WEFT_MASTER_KEY`.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Env(_) => "WEFT_MASTER_KEY".into(),
        }
    }
}

fn key_file_err(path: &Path, e: std::io::Error) -> VaultError {
    VaultError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Creates `path` readable by its owner only and syncs it and its directory, so a key that
/// wrapped anything is never lost to a crash.
fn write_new(path: &Path, text: &str) -> Result<(), VaultError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| key_file_err(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| key_file_err(path, e))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), VaultError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| key_file_err(dir, e))?;
    }
    Ok(())
}

/// The master keys of a running process, with the operations that use them.
///
/// When a credential names a key this process lacks and the keys come from a file, the file is
/// read again: that is how servers pick up `weft admin rotate-key` without a restart.
#[derive(Debug)]
pub struct Vault {
    source: KeySource,
    ring: RwLock<Arc<Keyring>>,
}

impl Vault {
    /// A vault over an already loaded ring.
    pub fn new(source: KeySource, ring: Keyring) -> Self {
        Vault {
            source,
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// Loads the keys from `source`.
    pub fn load(source: KeySource) -> Result<Self, VaultError> {
        let ring = source.load()?;
        Ok(Self::new(source, ring))
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The current keyring.
    pub fn ring(&self) -> Arc<Keyring> {
        match self.ring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A MAC of `msg` under a key derived from the primary master key for `purpose`: how the
    /// instance signs what it hands out (resume links), with nothing new to configure.
    pub fn sign(&self, purpose: &str, msg: &[u8]) -> [u8; 32] {
        mac(self.ring().primary(), purpose, msg)
    }

    /// Whether `tag` is (a prefix of at least 16 bytes of) [`Vault::sign`] of `msg` under any
    /// master key of the ring, so what was signed before a key rotation still verifies.
    pub fn verify(&self, purpose: &str, msg: &[u8], tag: &[u8]) -> bool {
        let ring = self.ring();
        ring.ids().iter().filter_map(|id| ring.get(id)).any(|k| {
            let want = mac(k, purpose, msg);
            // A prefix of at least 128 bits; compared in constant time (the tag comes from
            // whoever holds the link).
            (16..=32).contains(&tag.len())
                && want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
    }

    /// Reads the source again; true when the ring changed.
    pub fn reload(&self) -> Result<bool, VaultError> {
        let fresh = self.source.load()?;
        let changed = fresh.ids() != self.ring().ids();
        if changed {
            match self.ring.write() {
                Ok(mut g) => *g = Arc::new(fresh),
                Err(p) => *p.into_inner() = Arc::new(fresh),
            }
        }
        Ok(changed)
    }

    /// Seals values under the primary key.
    pub fn seal(&self, binding: &Binding, values: &SecretValues) -> Result<Sealed, VaultError> {
        seal::seal(self.ring().primary(), binding, values)
    }

    /// Opens a sealed credential, reloading the key file once if the key is unknown.
    pub fn open(&self, binding: &Binding, sealed: &Sealed) -> Result<SecretValues, VaultError> {
        match seal::open(&self.ring(), binding, sealed) {
            Err(VaultError::UnknownKey(id)) if matches!(self.source, KeySource::File(_)) => {
                if self.reload()? {
                    seal::open(&self.ring(), binding, sealed)
                } else {
                    Err(VaultError::UnknownKey(id))
                }
            }
            other => other,
        }
    }

    /// The sealed credential re-wrapped under the primary key; `None` when it already is.
    pub fn rewrap(&self, binding: &Binding, sealed: &Sealed) -> Result<Option<Sealed>, VaultError> {
        seal::rewrap(&self.ring(), binding, sealed)
    }
}

/// HMAC-SHA256 of `msg` under a key derived from `key` for `purpose` (never the master key
/// itself, so a MAC reveals nothing usable against sealed credentials).
fn mac(key: &MasterKey, purpose: &str, msg: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut d = Sha256::new();
    d.update(b"weft derived key\0");
    d.update(purpose.as_bytes());
    d.update(b"\0");
    d.update(key.bytes());
    let mut derived = Zeroizing::new([0u8; 32]);
    derived.copy_from_slice(&d.finalize());
    let mut m = match <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(derived.as_ref()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return [0; 32],
    };
    m.update(msg);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Secret;

    fn binding(c: &str) -> Binding {
        Binding {
            tenant: "ten_1".into(),
            workspace: "wsp_1".into(),
            credential: c.into(),
        }
    }

    fn values() -> SecretValues {
        let mut v = SecretValues::new();
        v.insert("token", Secret::new("canary-ghp-0123456789"));
        v.insert("webhook_secret", Secret::new("s3cr3t"));
        v
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let ring = Keyring::generate().unwrap();
        let vault = Vault::new(KeySource::Env(String::new()), ring);
        let sealed = vault.seal(&binding("crd_a"), &values()).unwrap();
        assert_eq!(vault.open(&binding("crd_a"), &sealed).unwrap(), values());
        // Moved to another credential, or flipped bits: refused.
        assert!(matches!(
            vault.open(&binding("crd_b"), &sealed),
            Err(VaultError::Tampered)
        ));
        let mut other_tenant = binding("crd_a");
        other_tenant.tenant = "ten_2".into();
        assert!(vault.open(&other_tenant, &sealed).is_err());
        let mut bad = sealed.clone();
        let n = bad.ciphertext.len() - 1;
        bad.ciphertext[n] ^= 1;
        assert!(matches!(
            vault.open(&binding("crd_a"), &bad),
            Err(VaultError::Tampered)
        ));
        let mut short = sealed.clone();
        short.wrapped_key.truncate(5);
        assert!(vault.open(&binding("crd_a"), &short).is_err());
        // The plaintext is nowhere in the sealed form.
        let all = [sealed.wrapped_key.clone(), sealed.ciphertext.clone()].concat();
        assert!(!all.windows(6).any(|w| w == b"canary"));
    }

    #[test]
    fn two_seals_of_the_same_values_differ() {
        let vault = Vault::new(KeySource::Env(String::new()), Keyring::generate().unwrap());
        let a = vault.seal(&binding("crd_a"), &values()).unwrap();
        let b = vault.seal(&binding("crd_a"), &values()).unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_key, b.wrapped_key);
    }

    #[test]
    fn rotation_rewraps_and_old_keys_retire() {
        let old = Keyring::generate().unwrap();
        let v_old = Vault::new(KeySource::Env(String::new()), old.clone());
        let sealed = v_old.seal(&binding("crd_a"), &values()).unwrap();
        let ring = old.with_primary(MasterKey::generate().unwrap());
        assert_eq!(ring.ids().len(), 2);
        let v = Vault::new(KeySource::Env(String::new()), ring.clone());
        assert_eq!(v.open(&binding("crd_a"), &sealed).unwrap(), values());
        let re = v.rewrap(&binding("crd_a"), &sealed).unwrap().unwrap();
        assert_eq!(re.key_id, ring.primary().id());
        assert_eq!(re.ciphertext, sealed.ciphertext);
        assert!(v.rewrap(&binding("crd_a"), &re).unwrap().is_none());
        let retired = Vault::new(KeySource::Env(String::new()), ring.primary_only());
        assert_eq!(retired.open(&binding("crd_a"), &re).unwrap(), values());
        assert!(matches!(
            retired.open(&binding("crd_a"), &sealed),
            Err(VaultError::UnknownKey(_))
        ));
    }

    #[test]
    fn key_text_parsing() {
        let ring = Keyring::generate().unwrap();
        let text = ring.to_text();
        let back = Keyring::parse(&text).unwrap();
        assert_eq!(back.ids(), ring.ids());
        let two = ring.with_primary(MasterKey::generate().unwrap());
        let env: Vec<String> = two
            .to_text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('#').next().unwrap().trim().to_string())
            .collect();
        assert_eq!(Keyring::parse(&env.join(",")).unwrap().ids(), two.ids());
        for bad in ["", "# only a comment", "not base64!", "AAAA"] {
            let e = Keyring::parse(bad).unwrap_err().to_string();
            assert!(e.contains("key"), "{e}");
        }
    }

    #[test]
    fn key_file_is_created_private_and_reloaded_on_unknown_key() {
        let dir = std::env::temp_dir().join(format!("weft-vault-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let src = KeySource::File(path.clone());
        let (ring, created) = src.load_or_create().unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = src.load_or_create().unwrap();
        assert!(!created);
        assert_eq!(again.ids(), ring.ids());

        // Another process rotates the file; this vault learns the new key when it meets it.
        let server = Vault::load(src.clone()).unwrap();
        let rotated = ring.with_primary(MasterKey::generate().unwrap());
        src.store(&rotated).unwrap();
        let admin = Vault::load(src.clone()).unwrap();
        let sealed = admin.seal(&binding("crd_a"), &values()).unwrap();
        assert_eq!(server.open(&binding("crd_a"), &sealed).unwrap(), values());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signatures_verify_under_every_key_of_the_ring_and_nothing_else() {
        let old = Keyring::generate().unwrap();
        let v = Vault::new(KeySource::Env(String::new()), old.clone());
        let tag = v.sign("links", b"run_1:approve");
        assert!(v.verify("links", b"run_1:approve", &tag));
        assert!(v.verify("links", b"run_1:approve", &tag[..16]));
        assert!(!v.verify("links", b"run_1:approve", &tag[..15]));
        assert!(!v.verify("other", b"run_1:approve", &tag));
        assert!(!v.verify("links", b"run_2:approve", &tag));
        // After a rotation the old key still verifies what it signed.
        let rotated = Vault::new(
            KeySource::Env(String::new()),
            old.with_primary(MasterKey::generate().unwrap()),
        );
        assert!(rotated.verify("links", b"run_1:approve", &tag));
        assert_ne!(rotated.sign("links", b"run_1:approve"), tag);
    }
}
