//! Password hashing: argon2id (the crate's defaults: 19 MiB, 2 passes), off the async threads.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// A hash of a password nobody has, verified against when the user is unknown so that a login
/// takes the same time whether or not the account exists.
const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9w3Gk3zUu0c0ryhw6bYjsM0hHvS0ThIQvPB1Wk5qL2A";

/// At most this many hashes are computed at once (19 MiB each): a flood of logins queues here
/// instead of exhausting memory and the blocking pool.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Hashes a password into a PHC string.
pub async fn hash(password: String) -> Result<String, String> {
    let _slot = SLOTS
        .acquire()
        .await
        .map_err(|e| format!("cannot hash the password: {e}"))?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| format!("cannot hash the password: {e}"))
    })
    .await
    .map_err(|e| format!("cannot hash the password: {e}"))?
}

/// Whether `password` matches `stored` (a PHC string); false when there is none.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    let Ok(_slot) = SLOTS.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let (hash, real) = match &stored {
            Some(h) => (h.as_str(), true),
            None => (DUMMY, false),
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok();
        ok && real
    })
    .await
    .unwrap_or(false)
}
