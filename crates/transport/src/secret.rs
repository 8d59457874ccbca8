//! [`Secrets`]: the cluster secret every member shares, and the keys derived from it.
//!
//! A cluster secret proves membership: every peer request and every admin request is signed
//! with a key derived from it ([`crate::Signer`]), and every context token a client receives
//! carries a MAC under another key derived from it (`kv_api::context`). A process holds a
//! *list* of secrets so that one can be rotated without downtime: it signs with the first and
//! accepts any (docs/security.md, "Rotating the cluster secret").
//!
//! Keys are derived per purpose (HMAC-SHA256 of the purpose under the secret), so a peer
//! signature can never be replayed as a context MAC or the other way round, and each derived key
//! has an 8-hex-digit id (a digest prefix, which says nothing about the secret) so that a
//! receiver picks the right key at once and says which one it lacks.

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// Shortest secret accepted, in bytes: 128 bits of entropy at the least as hex (`openssl rand
/// -hex 32` gives 64 characters).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 1024;

/// Most secrets one process holds at once (rotation needs two; a few more leave room).
pub const MAX_SECRETS: usize = 8;

/// The secret used with `--insecure`: requests are still signed (a corrupted or cross-version
/// request is refused) but anyone who reads this source can sign. Never for a shared network.
const INSECURE_SECRET: &[u8] = b"kv-insecure-built-in-cluster-secret-v3: no protection";

/// The cluster secrets one process holds, the first one signing. Never logged: `Debug` shows
/// only key ids.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    secrets: Vec<Vec<u8>>,
    insecure: bool,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.secrets.iter().map(|s| key_id(s, "id")).collect();
        f.debug_struct("Secrets").field("ids", &ids).field("insecure", &self.insecure).finish()
    }
}

impl Secrets {
    /// The built-in secret of `--insecure` processes.
    pub fn insecure() -> Secrets {
        Secrets { secrets: vec![INSECURE_SECRET.to_vec()], insecure: true }
    }

    /// Whether this is the built-in `--insecure` secret.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Secrets from text: one per line (a file), or separated by commas (the `KV_CLUSTER_SECRET`
    /// variable); blank lines and lines starting with `#` are skipped. Each must be
    /// [`MIN_SECRET_BYTES`] to [`MAX_SECRET_BYTES`] of visible ASCII without commas; at most
    /// [`MAX_SECRETS`]. The error names the entry by position, never by content.
    pub fn parse(text: &str) -> Result<Secrets, String> {
        let mut secrets = Vec::new();
        for (i, entry) in text.split(['\n', ',']).map(str::trim).enumerate() {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let position = i + 1;
            if entry.len() < MIN_SECRET_BYTES || entry.len() > MAX_SECRET_BYTES {
                return Err(format!(
                    "secret {position} is {} bytes; a secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes \
                     (make one with: openssl rand -hex 32)",
                    entry.len()
                ));
            }
            if !entry.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("secret {position} holds characters other than visible ASCII"));
            }
            secrets.push(entry.as_bytes().to_vec());
        }
        if secrets.is_empty() {
            return Err("no secret found (one per line; lines starting with # are comments)".into());
        }
        if secrets.len() > MAX_SECRETS {
            return Err(format!("{} secrets; at most {MAX_SECRETS}", secrets.len()));
        }
        Ok(Secrets { secrets, insecure: false })
    }

    /// Secrets from a file (see [`Secrets::parse`]); the error names the file.
    pub fn from_file(path: &std::path::Path) -> Result<Secrets, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        Secrets::parse(&text).map_err(|e| format!("secret file {}: {e}", path.display()))
    }

    /// The key for `purpose` derived from each secret, the signing one first, with its id.
    pub fn derive(&self, purpose: &str) -> Vec<DerivedKey> {
        self.secrets
            .iter()
            .map(|secret| {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("invariant: HMAC accepts any key length");
                mac.update(b"kv derived key\n");
                mac.update(purpose.as_bytes());
                DerivedKey { id: key_id(secret, purpose), key: mac.finalize().into_bytes().into() }
            })
            .collect()
    }
}

/// A key derived from one secret for one purpose.
#[derive(Clone)]
pub struct DerivedKey {
    /// 8 hex digits naming the secret and purpose (a digest prefix).
    pub id: String,
    /// The key.
    pub key: [u8; 32],
}

/// The id of `secret`'s key for `purpose`: the first 4 bytes of SHA-256 over both, in hex.
fn key_id(secret: &[u8], purpose: &str) -> String {
    let digest = Sha256::new().chain_update(b"kv key id\n").chain_update(purpose).chain_update(secret).finalize();
    hex::encode(&digest[..4])
}

/// A new random secret (64 hex digits), for `make run` and tests.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a secret: {e}"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_from_lines_or_commas_and_refuse_weak_ones() {
        let a = "a".repeat(32);
        let b = "b".repeat(40);
        let file = Secrets::parse(&format!("# new first\n{a}\n\n{b}\n")).unwrap();
        let env = Secrets::parse(&format!("{a},{b}")).unwrap();
        assert_eq!(file, env);
        assert_eq!(file.derive("x").len(), 2);
        assert!(Secrets::parse("short").unwrap_err().contains("32 to 1024"));
        assert!(Secrets::parse("").unwrap_err().contains("no secret"));
        assert!(Secrets::parse(&format!("{a} {a}")).is_err(), "spaces are not part of a secret");
        let many = vec![a.clone(); MAX_SECRETS + 1].join("\n");
        assert!(Secrets::parse(&many).is_err());
        // The error never shows the secret.
        assert!(!Secrets::parse(&format!("{}é", "x".repeat(40))).unwrap_err().contains("xxxx"));
        assert!(!format!("{file:?}").contains(&a));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_secret() {
        let one = Secrets::parse(&"a".repeat(32)).unwrap();
        let two = Secrets::parse(&"b".repeat(32)).unwrap();
        let (p, c) = (one.derive("peer"), one.derive("context"));
        assert_ne!(p[0].key, c[0].key);
        assert_ne!(p[0].id, c[0].id);
        assert_ne!(p[0].key, two.derive("peer")[0].key);
        assert_eq!(p[0].id.len(), 8);
        assert_eq!(generate().unwrap().len(), 64);
    }
}
