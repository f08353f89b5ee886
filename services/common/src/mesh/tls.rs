//! Certificates from files (a mounted Secret), re-read when they change, for both ends of every
//! internal connection. The server side accepts TLS itself so each new connection uses the
//! newest certificate and CA while established ones go on undisturbed; the client side gives
//! tonic a fresh `ClientTlsConfig` and the channel re-dials with it (see `grpc::channel`).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::{IDENTITY_PREFIX, Peer, Service};

/// Where this process's certificate, key and trusted CA bundle are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: no usable private key: {1}")]
    Key(PathBuf, String),
    #[error("{0}: not a usable CA bundle: {1}")]
    Ca(PathBuf, String),
    #[error("{0}: cannot read the certificate: {1}")]
    Certificate(PathBuf, String),
    #[error("{0}: the certificate names no chatmesh service (a URI SAN {IDENTITY_PREFIX}<service>)")]
    NoIdentity(PathBuf),
    #[error("certificate and key do not form a TLS configuration: {0}")]
    Config(String),
}

/// One consistent reading of the three files.
pub struct Loaded {
    pub server: Arc<rustls::ServerConfig>,
    /// Without a server name: each channel adds the host it dials.
    pub client: ClientTlsConfig,
    /// The services this certificate names.
    pub identity: Vec<Service>,
    /// Unix seconds after which the certificate is no longer valid.
    pub not_after: i64,
}

/// The current certificates, kept up to date from the files by a background task.
#[derive(Clone)]
pub struct MeshTls {
    current: watch::Receiver<Arc<Loaded>>,
}

impl MeshTls {
    /// Reads the files now (an error if they are unusable), then re-reads them every `every`;
    /// a change that does not form a valid configuration is logged and the last good one kept.
    pub fn load(files: TlsFiles, every: Duration) -> Result<Self, TlsError> {
        let mut contents = read(&files)?;
        let loaded = parse(&files, &contents)?;
        record(&loaded);
        let (tx, current) = watch::channel(Arc::new(loaded));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if tx.is_closed() {
                    return;
                }
                let Ok(now) = read(&files) else { continue }; // mid-update: try again next time
                if now == contents {
                    continue;
                }
                match parse(&files, &now) {
                    Ok(loaded) => {
                        tracing::info!(identity = ?loaded.identity, not_after = loaded.not_after, "internal TLS certificates reloaded");
                        metrics::counter!("chatmesh_mesh_certificate_reloads_total").increment(1);
                        record(&loaded);
                        tx.send_replace(Arc::new(loaded));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "changed TLS files are not usable; keeping the previous certificates");
                        metrics::counter!("chatmesh_mesh_certificate_reload_failures_total").increment(1);
                    }
                }
                contents = now;
            }
        });
        Ok(Self { current })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.borrow().clone()
    }

    /// Changes when the certificates are reloaded.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Loaded>> {
        self.current.clone()
    }
}

fn record(loaded: &Loaded) {
    metrics::gauge!("chatmesh_mesh_certificate_expiry_timestamp_seconds").set(loaded.not_after as f64);
}

type Contents = [Vec<u8>; 3];

fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
    let get = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.to_path_buf(), e));
    Ok([get(&files.cert)?, get(&files.key)?, get(&files.ca)?])
}

fn parse(files: &TlsFiles, [cert, key, ca]: &Contents) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(files.cert.clone(), e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate(files.cert.clone()))?;
    let (identity, not_after) = describe(leaf).map_err(|e| TlsError::Certificate(files.cert.clone(), e))?;
    if identity.is_empty() {
        return Err(TlsError::NoIdentity(files.cert.clone()));
    }
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key(files.key.clone(), e.to_string()))?;

    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_slice_iter(ca) {
        let ca_cert = ca_cert.map_err(|e| TlsError::Ca(files.ca.clone(), e.to_string()))?;
        roots.add(ca_cert).map_err(|e| TlsError::Ca(files.ca.clone(), e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Ca(files.ca.clone(), "no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Ca(files.ca.clone(), e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let client = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .assume_http2(true);
    Ok(Loaded { server: Arc::new(server), client, identity, not_after })
}

/// The services a certificate names, and its expiry.
fn describe(cert: &CertificateDer<'_>) -> Result<(Vec<Service>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| e.to_string())?;
    let mut services = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(service) = uri.strip_prefix(IDENTITY_PREFIX).and_then(Service::from_name)
                && !services.contains(&service)
            {
                services.push(service);
            }
        }
    }
    services.sort();
    Ok((services, parsed.validity().not_after.timestamp()))
}

/// A TLS connection whose client proved its identity; tonic puts the [`Peer`] in every
/// request's extensions.
pub struct PeerStream {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A handshake that has not finished by then is dropped (a client that connects and stalls).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener`, completes the mutual TLS handshake with the current
/// certificates, and yields the connections whose client certificate chains to the CA. Ends
/// when the receiving server is gone.
pub fn incoming(listener: TcpListener, tls: MeshTls) -> tokio_stream::wrappers::ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting an internal connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => return handshake_failed(addr, &e.to_string()),
                    Err(_) => return handshake_failed(addr, "timed out"),
                };
                let services = io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| describe(leaf).ok())
                    .map(|(services, _)| services)
                    .unwrap_or_default();
                let _ = tx.send(Ok(PeerStream { io, peer: Peer { addr: Some(addr), services } })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn handshake_failed(addr: std::net::SocketAddr, why: &str) {
    tracing::warn!(%addr, %why, "internal TLS handshake failed (no or untrusted client certificate?)");
    metrics::counter!("chatmesh_mesh_handshake_failures_total").increment(1);
}
