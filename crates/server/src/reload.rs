//! [`HangupReloader`]: on SIGHUP, reads the cluster secret file and the token files again.
//!
//! Rotation without downtime (docs/security.md): put the new secret second in every process's
//! file and SIGHUP them all (each now accepts both), then put it first and SIGHUP again (each
//! now signs with it), then remove the old one. A file that does not parse keeps what is in
//! use, and the log says why.

use std::path::PathBuf;
use std::sync::Arc;

use kv_transport::Secrets;
use tokio_util::sync::CancellationToken;

use crate::tokens::ClientTokens;

/// What a reload of the secrets updates (the signer, the context sealer).
pub type OnSecrets = Box<dyn Fn(&Secrets) + Send + Sync>;

/// Worker: reloads the secret and tokens files on SIGHUP.
pub struct HangupReloader {
    secret_file: Option<PathBuf>,
    on_secrets: OnSecrets,
    tokens: Vec<(PathBuf, Arc<ClientTokens>)>,
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
    reloads: u64,
    last_error: Option<String>,
    /// A SIGHUP arrived since the last reload.
    signalled: bool,
}

impl HangupReloader {
    /// A reloader of `secret_file` (calling `on_secrets` with what it reads) and of each token
    /// file in `tokens` (the client's, the admin's).
    pub fn new(
        secret_file: Option<PathBuf>,
        on_secrets: OnSecrets,
        tokens: Vec<(PathBuf, Arc<ClientTokens>)>,
    ) -> HangupReloader {
        #[cfg(unix)]
        let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; secrets and tokens are not reloaded");
                None
            }
        };
        HangupReloader {
            secret_file,
            on_secrets,
            tokens,
            #[cfg(unix)]
            signal,
            reloads: 0,
            last_error: None,
            signalled: false,
        }
    }

    /// Reads both files again; what fails keeps what is in use.
    pub fn reload(&mut self) {
        let mut errors = Vec::new();
        if let Some(path) = &self.secret_file {
            match Secrets::from_file(path) {
                Ok(secrets) => {
                    (self.on_secrets)(&secrets);
                    tracing::info!(secrets = ?secrets, "SIGHUP: cluster secrets reloaded");
                }
                Err(e) => errors.push(e),
            }
        }
        for (path, tokens) in &self.tokens {
            match tokens.reload(path) {
                Ok(count) => tracing::info!(count, file = %path.display(), "SIGHUP: tokens reloaded"),
                Err(e) => errors.push(e),
            }
        }
        self.reloads += 1;
        self.last_error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &self.last_error {
            tracing::error!(error = %e, "SIGHUP: reload failed; keeping what is in use");
        }
    }
}

impl kv_worker::Worker for HangupReloader {
    fn name(&self) -> String {
        "reload".into()
    }

    fn status(&self) -> String {
        match &self.last_error {
            Some(e) => format!("{} reloads on SIGHUP; last failed: {e}", self.reloads),
            None => format!("{} reloads on SIGHUP", self.reloads),
        }
    }

    async fn work(&mut self, _shutdown: &CancellationToken) -> Result<kv_worker::WorkerState, String> {
        if std::mem::take(&mut self.signalled) {
            self.reload();
        }
        Ok(kv_worker::WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                self.signalled = true;
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// Starts the workers that reload the secret and tokens files on SIGHUP (calling `on_secrets`
/// with new secrets) and the TLS files when they change (handing the new client configuration
/// to `transport`).
pub fn spawn_reloaders(
    supervisor: &kv_worker::Supervisor,
    security: &crate::security::SecurityConfig,
    on_secrets: OnSecrets,
    tls: Option<&Arc<crate::tls::Tls>>,
    transport: &kv_transport::PeerTransport,
) {
    let tokens: Vec<_> = security.client_tokens.iter().chain(&security.admin_tokens).cloned().collect();
    if security.secret_file.is_some() || !tokens.is_empty() {
        let reloader = HangupReloader::new(security.secret_file.clone(), on_secrets, tokens);
        supervisor.spawn(kv_worker::Stage::Upkeep, reloader);
    }
    if let Some(tls) = tls {
        let transport = transport.clone();
        let reloader = crate::tls::TlsReloader::new(tls.clone(), move |config| {
            if let Err(e) = transport.set_tls(config) {
                tracing::error!(error = %e, "cannot use the reloaded TLS certificates for calls to peers");
            }
        });
        supervisor.spawn(kv_worker::Stage::Upkeep, reloader);
    }
}
