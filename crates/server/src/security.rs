//! Security settings shared by kvnode and kvgateway: the cluster secret, client tokens, TLS
//! files, and their reload on SIGHUP (docs/security.md).
//!
//! - **Cluster secret**: `--cluster-secret-file FILE` (one secret per line, the first signs;
//!   reloaded on SIGHUP) or the `KV_CLUSTER_SECRET` environment variable (comma-separated).
//!   Never a flag: command lines are visible to every user of the machine. Without either a
//!   process refuses to start, unless `--insecure` is given.
//! - **Client tokens**: `--client-tokens-file FILE` ([`ClientTokens`]), reloaded on SIGHUP.
//! - **Admin tokens**: `--admin-tokens-file FILE` (people's bearer tokens on `/admin/*`, beside
//!   signed requests), reloaded on SIGHUP.
//! - **TLS**: `--tls-cert`, `--tls-key`, `--tls-ca` ([`crate::tls`]), reloaded when the files
//!   change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kv_transport::Secrets;
use serde::Deserialize;

use crate::config::duration_setting;
use crate::tokens::{ClientTokens, TokenFile};

/// Environment variable holding the cluster secret(s), comma-separated, when no file is given.
pub const SECRET_ENV: &str = "KV_CLUSTER_SECRET";

/// Security settings of every server process.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SecuritySettings {
    /// File holding the cluster secret: one per line, at least 32 characters each (make one
    /// with `openssl rand -hex 32`); the first signs, every one listed is accepted (rotation).
    /// Reloaded on SIGHUP. Or set KV_CLUSTER_SECRET (comma-separated). Required unless
    /// --insecure.
    #[arg(long, env = "KV_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Run without a cluster secret: anyone who can reach the peer and admin ports controls the
    /// cluster. For a development cluster on one machine only.
    #[arg(long, env = "KV_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// How far a signed request's timestamp may be from this process's clock (clock offsets
    /// plus the time a request spends queued); also how long signatures are remembered against
    /// replay. At least twice --max-clock-offset [default: 30s].
    #[arg(long, env = "KV_AUTH_MAX_SKEW")]
    pub auth_max_skew: Option<String>,
    /// File of client tokens (`read TOKEN [name]` or `write TOKEN [name]` per line): the client
    /// API then answers 401 without `Authorization: Bearer TOKEN`, and 403 to a write with a
    /// read token. Reloaded on SIGHUP [default: none, no client authentication].
    #[arg(long, env = "KV_CLIENT_TOKENS_FILE", value_name = "FILE")]
    pub client_tokens_file: Option<PathBuf>,
    /// File of admin tokens for people (`read TOKEN [name]` or `admin TOKEN [name]` per line):
    /// `/admin/*` then also takes `Authorization: Bearer TOKEN` beside signed requests (a read
    /// token may only GET). Reloaded on SIGHUP [default: none, signed requests only].
    #[arg(long, env = "KV_ADMIN_TOKENS_FILE", value_name = "FILE")]
    pub admin_tokens_file: Option<PathBuf>,
    /// PEM certificate chain of this process: TLS on every listener (with --tls-key and
    /// --tls-ca). Reloaded when the file changes.
    #[arg(long, env = "KV_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "KV_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) of the CA that signs every member's certificate: peers verify each
    /// other against it (both ways).
    #[arg(long, env = "KV_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// Where the TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA certificate(s).
    pub ca: PathBuf,
}

/// Validated security settings.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// The cluster secrets (the built-in one with `--insecure`).
    pub secrets: Secrets,
    /// Where they came from, when a file (reloaded on SIGHUP).
    pub secret_file: Option<PathBuf>,
    /// Clock skew allowed for signed requests.
    pub max_skew: Duration,
    /// Client tokens, when client authentication is on.
    pub client_tokens: Option<(PathBuf, Arc<ClientTokens>)>,
    /// Admin tokens, when people may use the admin API with a bearer token.
    pub admin_tokens: Option<(PathBuf, Arc<ClientTokens>)>,
    /// TLS files, when TLS is on.
    pub tls: Option<TlsFiles>,
}

impl SecuritySettings {
    /// Fills every unset field from `lower`.
    pub fn layer_over(&mut self, lower: &mut SecuritySettings) {
        crate::layer!(
            self,
            lower,
            cluster_secret_file,
            insecure,
            auth_max_skew,
            client_tokens_file,
            admin_tokens_file,
            tls_cert,
            tls_key,
            tls_ca
        );
    }

    /// Loads the secret (file or environment) and the tokens, and checks the TLS files exist.
    pub fn validate(self) -> Result<SecurityConfig, String> {
        let insecure = self.insecure.unwrap_or(false);
        let env = std::env::var(SECRET_ENV).ok().filter(|v| !v.trim().is_empty());
        let (secrets, secret_file) = match (&self.cluster_secret_file, env) {
            (Some(_), Some(_)) => {
                return Err(format!("--cluster-secret-file and {SECRET_ENV} are both set; give one"));
            }
            (Some(path), None) => {
                warn_if_readable_by_others(path);
                (Secrets::from_file(path).map_err(|e| format!("--cluster-secret-file: {e}"))?, Some(path.clone()))
            }
            (None, Some(text)) => (Secrets::parse(&text).map_err(|e| format!("{SECRET_ENV}: {e}"))?, None),
            (None, None) if insecure => (Secrets::insecure(), None),
            (None, None) => {
                return Err(format!(
                    "no cluster secret: give --cluster-secret-file FILE (or set {SECRET_ENV}); make one with \
                     `openssl rand -hex 32 > FILE`, the same for every node and gateway of the cluster. Or pass \
                     --insecure to run without authentication (a development cluster on one machine only)"
                ));
            }
        };
        if insecure && !secrets.is_insecure() {
            return Err("--insecure: a cluster secret is also given; drop one of them".into());
        }
        let max_skew = duration_setting("--auth-max-skew", self.auth_max_skew.as_deref(), "30s")?;
        if max_skew < Duration::from_secs(1) || max_skew > Duration::from_secs(3600) {
            return Err(format!("--auth-max-skew: must be 1s to 1h, got {max_skew:?}"));
        }
        let client_tokens = match self.client_tokens_file {
            Some(path) => {
                let tokens = ClientTokens::from_file(&path).map_err(|e| format!("--client-tokens-file: {e}"))?;
                Some((path, Arc::new(tokens)))
            }
            None => None,
        };
        let admin_tokens = match self.admin_tokens_file {
            Some(_) if insecure => {
                return Err(
                    "--admin-tokens-file: with --insecure the admin API takes every request; drop one of them".into()
                );
            }
            Some(path) => {
                let tokens =
                    ClientTokens::read(TokenFile::Admin, &path).map_err(|e| format!("--admin-tokens-file: {e}"))?;
                Some((path, Arc::new(tokens)))
            }
            None => None,
        };
        let tls = match (self.tls_cert, self.tls_key, self.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            _ => return Err("--tls-cert, --tls-key and --tls-ca: give all three, or none".into()),
        };
        Ok(SecurityConfig { secrets, secret_file, max_skew, client_tokens, admin_tokens, tls })
    }
}

/// Warns when a secret file can be read by users other than its owner (mode bits for others,
/// or for a group other than the process's own): whoever reads it controls the cluster. A file
/// readable by the process's own group is what Kubernetes mounts with an `fsGroup` (mode 0440).
fn warn_if_readable_by_others(path: &std::path::Path) {
    if let Some(mode) = exposed_mode(path) {
        // Logging may not be set up yet: say it on stderr.
        eprintln!(
            "warning: {} is readable by other users (mode {mode:o}): whoever reads it controls the cluster; \
             chmod 600 it (or 640 with the process's group)",
            path.display(),
        );
    }
}

/// The permission bits of `path` when users other than its owner and the process's groups can
/// read it.
fn exposed_mode(path: &std::path::Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let meta = std::fs::metadata(path).ok()?;
        let mode = meta.permissions().mode() & 0o777;
        let group_is_ours = process_gids().contains(&meta.gid());
        (mode & 0o007 != 0 || (mode & 0o070 != 0 && !group_is_ours)).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The process's real, effective and supplementary group ids, from `/proc/self/status` (empty
/// where there is none: then only a file no group can read passes).
#[cfg(unix)]
fn process_gids() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("Gid:") || l.starts_with("Groups:"))
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admin tokens with --insecure are refused at start-up (the admin API would take every
    /// request anyway); a bad admin file names its line; a client-token role is refused there.
    #[test]
    fn admin_tokens_are_validated_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin");
        std::fs::write(&path, "admin a-token-0123456789abcdef\n").unwrap();
        let settings = |insecure, file: &std::path::Path| SecuritySettings {
            insecure: Some(insecure),
            admin_tokens_file: Some(file.to_owned()),
            ..SecuritySettings::default()
        };
        let refused = settings(true, &path).validate().unwrap_err();
        assert!(refused.contains("--admin-tokens-file") && refused.contains("--insecure"), "{refused}");
        std::fs::write(&path, "write a-token-0123456789abcdef\n").unwrap();
        let mut secured = settings(false, &path);
        secured.cluster_secret_file = Some(dir.path().join("secret"));
        std::fs::write(dir.path().join("secret"), "s".repeat(40)).unwrap();
        let refused = secured.validate().unwrap_err();
        assert!(refused.contains("line 1") && refused.contains("`read` or `admin`"), "{refused}");
    }

    /// A secret readable by anyone, or by a group the process is not in, is flagged; one
    /// readable by the owner, or by the process's own group (Kubernetes' `fsGroup` mounts, mode
    /// 0440), is not.
    #[cfg(unix)]
    #[test]
    fn secret_files_readable_beyond_the_process_are_flagged() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        set(0o600);
        assert_eq!(exposed_mode(&path), None);
        set(0o440); // the file's group is the process's (it created it)
        assert_eq!(exposed_mode(&path), None);
        set(0o644);
        assert_eq!(exposed_mode(&path), Some(0o644));
        set(0o604);
        assert_eq!(exposed_mode(&path), Some(0o604));
    }
}
