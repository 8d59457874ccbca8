//! [`Tls`]: one certificate per process, for its listeners and its calls to peers (rustls).
//!
//! With `--tls-cert`, `--tls-key` and `--tls-ca`, every listener speaks only TLS. The peer
//! listener also asks the caller for a certificate and accepts only one signed by the CA
//! (mutual TLS), and the transport presents this process's certificate and accepts only peers
//! whose certificate the CA signed for the name it dialed: members prove to each other that
//! they belong, on top of the cluster secret's signatures. The client and admin listeners do
//! not ask clients for certificates.
//!
//! The files are read again when one of them changes (size or modification time), checked
//! every [`RELOAD_EVERY`] by the [`TlsReloader`] worker: a renewed certificate is used by the
//! next connection, without a restart. A reload that fails (a half-written file, a key that
//! does not match) keeps the certificates in use and says why in the log.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::security::TlsFiles;

/// How often the reloader looks at the files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The configurations built from one reading of the files.
struct Loaded {
    /// Client and admin listeners: no client certificate asked.
    server: Arc<ServerConfig>,
    /// Peer listener: a client certificate signed by the CA required.
    peer: Arc<ServerConfig>,
    /// Calls to peers: the CA's certificates as the only roots, ours presented.
    client: Arc<ClientConfig>,
}

/// What identifies one version of a file.
type Stamp = Option<(SystemTime, u64)>;

/// TLS settings of a process, reloadable.
pub struct Tls {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
    stamps: Mutex<[Stamp; 3]>,
}

impl Tls {
    /// Reads the files; a clear error if one is missing or wrong.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let stamps = stamps(files);
        let loaded = build(files)?;
        Ok(Tls { files: files.clone(), loaded: RwLock::new(loaded), stamps: Mutex::new(stamps) })
    }

    /// The configuration for a listener: the peer listener's asks for a client certificate.
    pub fn server_config(&self, peer: bool) -> Arc<ServerConfig> {
        let loaded = self.loaded.read();
        if peer {
            loaded.peer.clone()
        } else {
            loaded.server.clone()
        }
    }

    /// The configuration for calls to peers.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.loaded.read().client.clone()
    }

    /// Reads the files again if any changed since the last reading. `Ok(true)`: new
    /// configurations are in use.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamps(&self.files);
        if *self.stamps.lock() == now {
            return Ok(false);
        }
        let built = build(&self.files);
        // Remember the stamps even when the build fails: a broken file is reported once, and
        // read again when it changes.
        *self.stamps.lock() = now;
        *self.loaded.write() = built?;
        Ok(true)
    }
}

fn stamps(files: &TlsFiles) -> [Stamp; 3] {
    [&files.cert, &files.key, &files.ca]
        .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
}

fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<Loaded, String> {
    let chain = certificates("--tls-cert", &files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in certificates("--tls-ca", &files.ca)? {
        roots.add(ca).map_err(|e| format!("--tls-ca {}: {e}", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let mismatch = |e: rustls::Error| format!("--tls-cert/--tls-key: {e}");
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let verifier = WebPkiClientVerifier::builder(roots.clone()).build().map_err(|e| format!("--tls-ca: {e}"))?;
    let mut peer = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
    peer.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client =
        ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain, key).map_err(mismatch)?;
    Ok(Loaded { server: Arc::new(server), peer: Arc::new(peer), client: Arc::new(client) })
}

/// Worker: reloads the TLS files when they change, and hands the new client configuration to
/// `on_client` (the peer transport).
pub struct TlsReloader {
    tls: Arc<Tls>,
    on_client: Box<dyn Fn(Arc<ClientConfig>) + Send + Sync>,
    reloads: u64,
    last_error: Option<String>,
}

impl TlsReloader {
    /// A reloader of `tls`.
    pub fn new(tls: Arc<Tls>, on_client: impl Fn(Arc<ClientConfig>) + Send + Sync + 'static) -> TlsReloader {
        TlsReloader { tls, on_client: Box::new(on_client), reloads: 0, last_error: None }
    }
}

impl kv_worker::Worker for TlsReloader {
    fn name(&self) -> String {
        "tls-reload".into()
    }

    fn status(&self) -> String {
        match &self.last_error {
            Some(e) => format!("{} reloads; last reload failed: {e}", self.reloads),
            None => format!("{} reloads", self.reloads),
        }
    }

    async fn work(&mut self, _shutdown: &CancellationToken) -> Result<kv_worker::WorkerState, String> {
        match self.tls.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                (self.on_client)(self.tls.client_config());
                self.reloads += 1;
                self.last_error = None;
                tracing::info!("TLS files changed: new certificates in use for new connections");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the certificates in use");
                self.last_error = Some(e);
            }
        }
        Ok(kv_worker::WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(RELOAD_EVERY).await;
    }
}
