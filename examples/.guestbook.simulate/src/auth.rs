//! The admin login: password hashing (argon2, PHC strings in the database), session tokens, and
//! reading the initial password from the environment or a secrets file.
//!
//! Only hashes are ever stored: the password as an argon2 hash, a session as the blake3 hash of
//! its random token, so a copy of the database (a backup, a rewind) never holds a usable secret.
//! Nothing here logs a password or a token.

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;

/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "guestbook_session";
/// Longest password we accept, to bound hashing work.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Hashes a password into a PHC string (argon2id, random salt). Slow on purpose: call it off
/// the async threads.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|err| anyhow::anyhow!("encoding the password salt failed: {err}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|err| anyhow::anyhow!("hashing the admin password failed: {err}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the stored PHC `hash`. A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A fresh random session token (hex, 256 bits) and the hash under which it is stored.
pub fn new_session_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex(&bytes);
    let stored = session_token_hash(&token);
    (token, stored)
}

/// The hash under which a session token is stored.
pub fn session_token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a new password is acceptable, saying what to do when it is not.
pub fn validate_new_password(password: &str) -> anyhow::Result<()> {
    if password.chars().count() < 8 {
        anyhow::bail!("the admin password is too short: use at least 8 characters");
    }
    if password.len() > MAX_PASSWORD_LEN {
        anyhow::bail!("the admin password is too long: use at most {MAX_PASSWORD_LEN} bytes");
    }
    Ok(())
}

/// The admin password given by `GUESTBOOK_ADMIN_PASSWORD`, or read from the file named by
/// `GUESTBOOK_ADMIN_PASSWORD_FILE` (one trailing newline is ignored). `None` when neither is set.
pub fn password_from_env() -> anyhow::Result<Option<String>> {
    if let Ok(password) = std::env::var("GUESTBOOK_ADMIN_PASSWORD") {
        return Ok(Some(password));
    }
    if let Some(file) = std::env::var_os("GUESTBOOK_ADMIN_PASSWORD_FILE") {
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "reading the admin password from GUESTBOOK_ADMIN_PASSWORD_FILE={}; \
                 check the path and that this user may read it",
                std::path::Path::new(&file).display()
            )
        })?;
        return Ok(Some(strip_one_newline(&text).to_string()));
    }
    Ok(None)
}

/// Removes one trailing `\n` or `\r\n`.
pub fn strip_one_newline(text: &str) -> &str {
    text.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_others_do_not() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[test]
    fn session_tokens_are_unique_and_stored_only_as_hashes() {
        let (a, a_hash) = new_session_token();
        let (b, _) = new_session_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(a, a_hash);
        assert_eq!(session_token_hash(&a), a_hash);
    }

    #[test]
    fn one_trailing_newline_is_ignored() {
        assert_eq!(strip_one_newline("pw\n"), "pw");
        assert_eq!(strip_one_newline("pw\r\n"), "pw");
        assert_eq!(strip_one_newline("pw\n\n"), "pw\n");
        assert_eq!(strip_one_newline("pw"), "pw");
    }
}
