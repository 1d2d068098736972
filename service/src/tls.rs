//! TLS between the programs of the cluster and towards their callers.
//!
//! Without TLS the cluster token and every committed value cross the network in clear, and
//! nothing stops a process on the network from posing as an agent. With `--tls-cert`,
//! `--tls-key` and `--tls-ca`, every program serves HTTPS and calls the others over HTTPS,
//! trusting the cluster's own CA and nothing else; `--tls-client-auth` adds mutual TLS, so that
//! the internal endpoints answer only programs holding a certificate from that CA.
//!
//! What this module provides, in the order a program uses it:
//!
//! - [`TlsOptions`] (the four options as given) and [`TlsOptions::load`], which checks them
//!   together and reads the files once, at startup, into a [`Tls`].
//! - [`serve`]: plain HTTP or HTTPS on a bound listener, with graceful shutdown, and a
//!   [`PeerInfo`] for each connection that handlers and middleware can read.
//! - [`guard_client_cert`]: the routes that need a client certificate (403 otherwise).
//! - [`crate::client_builder_tls`] (in `http_client`): the outbound side.
//! - [`generate_local_pki`] and [`LocalCa`]: certificates for a local cluster and for tests.
//!
//! Invariants:
//!
//! - One crypto provider, ring, chosen explicitly in every configuration built here (server,
//!   client, client verifier). Nothing depends on a process-level default provider, so none is
//!   installed and none can be missing at run time. ring is also the only provider compiled in
//!   (aws-lc-rs needs cmake and would make rustls' own default ambiguous).
//! - Trust comes from `--tls-ca` alone: no public web roots, no system store.
//! - A client certificate is optional at the handshake and required per route. The server
//!   verifies a certificate that is presented (a bad one fails the handshake) but admits a
//!   client that presents none, because reads, commits, `/health`, `/metrics` and the web page
//!   must stay reachable without one; [`guard_client_cert`] refuses the rest.
//! - A TLS handshake never runs inside `accept()`: each runs in its own task, bounded in time
//!   ([`HANDSHAKE_TIMEOUT`]) and in number ([`MAX_HANDSHAKES_IN_FLIGHT`]), so a client that
//!   connects and sends nothing cannot hold up anyone else.
//! - Only HTTP/1.1 is offered (ALPN `http/1.1`): the programs speak HTTP/1.1 and axum is built
//!   here without HTTP/2.
//!
//! Not here: the option parsing (each program's `Args`), and which routes are internal (each
//! program's router).

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use protocol::ErrorBody;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

const CERT_FLAG: &str = "--tls-cert";
const KEY_FLAG: &str = "--tls-key";
const CA_FLAG: &str = "--tls-ca";

/// How long a connection may take to finish its TLS handshake. A handshake takes a few round
/// trips, milliseconds on a LAN; the bound is there so that a client that connects and sends
/// nothing gives its slot (below) back.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS handshakes may be under way at once. Each holds a socket and some tens of KB of
/// TLS state; the programs keep pooled connections and open few new ones, so honest use stays
/// far below this. Beyond it, new connections wait in the kernel's backlog rather than cost
/// memory.
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 256;

/// After an accept error other than a peer's reset (such as running out of file descriptors),
/// wait this long before accepting again, as axum's own listener does: such errors last a while
/// and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The largest certificate or key file read. A certificate chain or a key is a few KB; a larger
/// file is a wrong path, and a path such as `/dev/zero` must not exhaust memory.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// The one application protocol offered and accepted (see the module's invariants).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider of every configuration built here, made once.
///
/// rustls 0.23.48 deprecates its ring provider because ring has no post-quantum key exchange
/// (X25519MLKEM768): recorded traffic could be decrypted by a future quantum computer. Kept
/// for now: aws-lc-rs, which has it, needs a C build (and reqwest 0.12 compiles ring in anyway,
/// which would make two providers). Moving over is this line plus the crates' features.
#[allow(deprecated)]
fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The TLS options of a program, as given on its command line or in its configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--tls-cert`: the program's certificate (PEM; chain allowed, leaf first), used as its
    /// server certificate and, towards the others, as its client certificate.
    pub cert: Option<PathBuf>,
    /// `--tls-key`: the private key of `cert` (PEM, unencrypted).
    pub key: Option<PathBuf>,
    /// `--tls-ca`: the cluster's CA (PEM), the only issuer trusted for servers and clients.
    pub ca: Option<PathBuf>,
    /// `--tls-client-auth`: internal endpoints require a client certificate from `ca`.
    pub client_auth: bool,
}

/// Why the TLS options cannot be used; each message names the option and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {} needs --tls-key: the private key of that certificate", cert.display())]
    CertWithoutKey { cert: PathBuf },
    #[error("--tls-key {} needs --tls-cert: the certificate of that key", key.display())]
    KeyWithoutCert { key: PathBuf },
    #[error(
        "--tls-cert {} needs --tls-ca: the programs call each other over HTTPS and verify the one \
         answering against the cluster's CA",
        cert.display()
    )]
    CertWithoutCa { cert: PathBuf },
    #[error(
        "--tls-client-auth needs --tls-cert and --tls-key: only a program that serves HTTPS can ask \
         its callers for a certificate"
    )]
    ClientAuthWithoutCert,
    #[error("--tls-client-auth needs --tls-ca: the callers' certificates are verified against the cluster's CA")]
    ClientAuthWithoutCa,
    #[error("--tls-ca alone is not enough for {program}, which serves: give --tls-cert and --tls-key too")]
    ServerWithoutCert { program: &'static str },
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag} {} is larger than {max} bytes: not a certificate or key file", path.display())]
    TooLarge { flag: &'static str, path: PathBuf, max: u64 },
    #[error("{flag} {} is not valid PEM: {detail}", path.display())]
    NotPem { flag: &'static str, path: PathBuf, detail: &'static str },
    #[error("{flag} {} holds no certificate: expected a PEM block '-----BEGIN CERTIFICATE-----'", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error(
        "--tls-key {} holds no private key: expected an unencrypted PEM block '-----BEGIN PRIVATE KEY-----' \
         (or 'EC PRIVATE KEY', 'RSA PRIVATE KEY')",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("--tls-key {} is not a key this program can use: {detail}", path.display())]
    UnusableKey { path: PathBuf, detail: String },
    #[error("--tls-cert {} cannot be used: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("--tls-key {} is not the key of the certificate in --tls-cert {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("--tls-ca {} cannot serve as the cluster's CA: {detail}", path.display())]
    BadCa { path: PathBuf, detail: String },
    /// Cannot happen with the provider and inputs checked above; reported rather than unwrapped.
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// The TLS configuration of a program, loaded and checked. Cheap to clone (`Arc`s inside).
#[derive(Clone)]
pub struct Tls {
    client: Arc<ClientConfig>,
    /// `None` for a program that only calls others (given `--tls-ca` alone).
    server: Option<Arc<ServerConfig>>,
    client_auth: bool,
}

impl fmt::Debug for Tls {
    /// Neither the key nor the certificates: this can end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("serves_https", &self.server.is_some())
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// [`TlsOptions::load`] for a program that serves (the agent, the supervisor, `client
    /// serve`, named in the error as `program`): with TLS it needs its own certificate.
    pub fn load_for_server(&self, program: &'static str) -> Result<Option<Tls>, TlsError> {
        let tls = self.load()?;
        if tls.as_ref().is_some_and(|t| t.server_config().is_none()) {
            return Err(TlsError::ServerWithoutCert { program });
        }
        Ok(tls)
    }

    /// Checks the options together and reads their files: `Ok(None)` when none is given (plain
    /// HTTP), a [`Tls`] that serves and calls over HTTPS with `cert`, `key` and `ca`, and one that
    /// only calls (a client program) with `ca` alone.
    ///
    /// A certificate that has expired is not refused here: the peers refuse it, and their
    /// messages say so.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        let own = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (Some(cert), None) => return Err(TlsError::CertWithoutKey { cert: cert.clone() }),
            (None, Some(key)) => return Err(TlsError::KeyWithoutCert { key: key.clone() }),
        };
        if self.client_auth && own.is_none() {
            return Err(TlsError::ClientAuthWithoutCert);
        }
        let Some(ca) = &self.ca else {
            if self.client_auth {
                return Err(TlsError::ClientAuthWithoutCa);
            }
            return match own {
                Some((cert, _)) => Err(TlsError::CertWithoutCa { cert: cert.to_path_buf() }),
                None => Ok(None),
            };
        };
        let provider = crypto_provider();
        let roots = Arc::new(load_roots(ca)?);
        let identity = own.map(|(cert, key)| load_identity(cert, key, &provider)).transpose()?.map(Arc::new);
        let client = client_config(&provider, roots.clone(), identity.clone())?;
        let server =
            identity.map(|identity| server_config(&provider, roots, identity, self.client_auth)).transpose()?;
        Ok(Some(Tls { client: Arc::new(client), server: server.map(Arc::new), client_auth: self.client_auth }))
    }
}

impl Tls {
    /// The configuration to serve HTTPS with; `None` without `--tls-cert`/`--tls-key`.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server.clone()
    }

    /// The configuration to call the others with: the cluster's CA as the only root, and the
    /// program's own certificate as its client certificate when it has one.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// Whether `--tls-client-auth` was given: pass to [`guard_client_cert`].
    pub fn client_auth(&self) -> bool {
        self.client_auth
    }

    /// The URL scheme to reach a program with this configuration.
    pub fn scheme(&self) -> &'static str {
        "https"
    }
}

/// The base URL of a program at `addr` (`host:port`): `https://addr` with TLS, `http://addr`
/// without.
pub fn base_url(addr: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, CA_FLAG)? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: path.to_path_buf(), detail: e.to_string() })?;
    }
    Ok(roots)
}

/// The program's certificate chain with its key, checked to belong together: a key of another
/// certificate would otherwise show only as every peer failing the handshake.
fn load_identity(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert, CERT_FLAG)?;
    let key_der = read_key(key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::UnusableKey { path: key.to_path_buf(), detail: e.to_string() })?;
    let identity = CertifiedKey::new(chain, signing_key);
    match identity.keys_match() {
        // `Unknown`: the key cannot tell its public half (not so with ring's keys); the
        // handshake will tell instead.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(identity),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() })
        }
        Err(e) => Err(TlsError::BadCertificate { path: cert.to_path_buf(), detail: e.to_string() }),
    }
}

fn read_certs(path: &Path, flag: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_file(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem { flag, path: path.to_path_buf(), detail: describe_pem_error(&e) })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { flag, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem_file(path, KEY_FLAG)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_path_buf() },
        e => TlsError::NotPem { flag: KEY_FLAG, path: path.to_path_buf(), detail: describe_pem_error(&e) },
    })
}

fn read_pem_file(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read { flag, path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge { flag, path: path.to_path_buf(), max: MAX_PEM_FILE_BYTES });
    }
    Ok(bytes)
}

/// What is wrong with a PEM file, without quoting it: the file may hold a key.
fn describe_pem_error(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no '-----END ...-----' line",
        pem::Error::IllegalSectionStart { .. } => "a '-----BEGIN ...-----' line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "it cannot be parsed",
    }
}

fn config_error(e: impl fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    identity: Option<Arc<CertifiedKey>>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots);
    let mut config = match identity {
        // Sent only when a server asks (one with --tls-client-auth).
        Some(identity) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    identity: Arc<CertifiedKey>,
    client_auth: bool,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = if client_auth {
        // Asks every client for a certificate and verifies one that comes, but admits a client
        // without one: the routes decide (module invariants).
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(config_error)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Serving

/// What a handler can know of the connection a request came on. Every router served by
/// [`serve`] gets it; extract it with `ConnectInfo<PeerInfo>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The client presented a certificate and it was verified against the cluster's CA. Only
    /// with `--tls-client-auth`; always `false` over plain HTTP.
    pub client_cert_verified: bool,
}

impl Connected<IncomingStream<'_, TcpListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerInfo { remote: *stream.remote_addr(), client_cert_verified: false }
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        PeerInfo { remote: *stream.remote_addr(), client_cert_verified: false }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        // With `allow_unauthenticated`, a certificate that is there passed verification: a bad
        // one would have failed the handshake.
        let verified = stream.io().get_ref().1.peer_certificates().is_some_and(|chain| !chain.is_empty());
        PeerInfo { remote: *stream.remote_addr(), client_cert_verified: verified }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the requests under way
/// finish: plain HTTP when `tls` is `None`, HTTPS otherwise. Every accepted socket gets
/// TCP_NODELAY, and every request a [`PeerInfo`].
///
/// Fails at once, with a message naming the options, when `tls` cannot serve (it was loaded
/// from `--tls-ca` alone).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<&Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router.into_make_service_with_connect_info::<PeerInfo>();
    match tls {
        None => axum::serve(PlainListener::new(listener), app).with_graceful_shutdown(shutdown).await,
        Some(tls) => {
            let Some(config) = tls.server_config() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "serving HTTPS needs --tls-cert and --tls-key (--tls-ca alone is for a program that only calls others)",
                ));
            };
            axum::serve(TlsListener::new(listener, config), app).with_graceful_shutdown(shutdown).await
        }
    }
}

/// Small request/response pairs: without TCP_NODELAY, Nagle's algorithm and delayed ACKs add
/// tens of milliseconds to every round trip.
fn set_nodelay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "could not set TCP_NODELAY");
    }
}

/// A TCP listener whose connections have TCP_NODELAY: what `ListenerExt::tap_io` does, as a
/// type of its own because [`PeerInfo`] cannot be made from a `TapIo` (axum's impl of
/// `Connected` for every `TapIo` overlaps).
#[derive(Debug)]
pub struct PlainListener {
    tcp: TcpListener,
}

impl PlainListener {
    pub fn new(tcp: TcpListener) -> Self {
        PlainListener { tcp }
    }
}

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's accept, which handles the accept errors.
        let (tcp, remote) = Listener::accept(&mut self.tcp).await;
        set_nodelay(&tcp);
        (tcp, remote)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A TCP listener whose connections come out of `accept()` with their TLS handshake done.
///
/// `accept()` only takes TCP connections and starts a task per handshake; the handshakes run
/// concurrently and `accept()` hands out whichever finishes. A handshake that fails (plain HTTP
/// on this port, a certificate the server or client refuses) or times out is logged and its
/// connection closed; serving goes on. Dropping the listener (as graceful shutdown does)
/// aborts the handshakes under way.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        TlsListener { tcp, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new() }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Cancel-safe, as axum needs (it drops this future when shutdown begins): both
        // `JoinSet::join_next` and `TcpListener::accept` are, and no state changes between.
        loop {
            tokio::select! {
                // A finished handshake first: a client is waiting on it.
                biased;
                Some(done) = self.handshakes.join_next() => match done {
                    Ok(Some(connection)) => return connection,
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "a TLS handshake task failed"),
                },
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES_IN_FLIGHT => match accepted {
                    Ok((tcp, remote)) => {
                        set_nodelay(&tcp);
                        self.handshakes.spawn(handshake(self.acceptor.clone(), tcp, remote));
                    }
                    Err(e) => on_accept_error(e).await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some((stream, remote)),
        Ok(Err(e)) => {
            log_handshake_failure(remote, &e);
            None
        }
        Err(_) => {
            tracing::debug!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// A certificate refused either way is a misconfigured cluster (another CA, an expired
/// certificate) and worth a warning; anything else (plain HTTP on this port, a scanner, a
/// client gone) is routine. rustls' errors name the problem, never key material.
fn log_handshake_failure(remote: SocketAddr, error: &io::Error) {
    use rustls::AlertDescription as Alert;
    let tls_error = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(
            e @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::CertificateRevoked
                | Alert::UnsupportedCertificate,
            )),
        ) => tracing::warn!(%remote, error = %e, "TLS handshake failed: a certificate was refused"),
        Some(e) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        None => tracing::debug!(%remote, error = %error, "TLS handshake failed"),
    }
}

/// As axum's own `TcpListener` does: a peer's reset is routine; anything else (out of file
/// descriptors) is logged and accepting pauses.
async fn on_accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, pause = ?ACCEPT_ERROR_PAUSE, "cannot accept a connection");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

// ---------------------------------------------------------------------------------------------
// Client certificates on guarded routes

/// The message of the 403 answer to a call without a client certificate.
pub const CLIENT_CERT_REQUIRED_MESSAGE: &str =
    "this endpoint needs a client certificate signed by the cluster's CA (--tls-client-auth)";

/// With `enabled` (the program's `--tls-client-auth`), the routes of `router` refuse a call
/// whose connection did not present a verified client certificate; otherwise they are left as
/// they are. Apply it to the internal routes only: the public ones must stay reachable
/// without a certificate.
pub fn guard_client_cert<S: Clone + Send + Sync + 'static>(router: Router<S>, enabled: bool) -> Router<S> {
    if enabled {
        router.route_layer(axum::middleware::from_fn(require_client_cert))
    } else {
        router
    }
}

/// Refuses (403 `client_certificate_required`) a call whose connection did not present a
/// verified client certificate; a request without a [`PeerInfo`] (not served by [`serve`])
/// counts as without. Use through [`guard_client_cert`], or as
/// `axum::middleware::from_fn(require_client_cert)`.
pub async fn require_client_cert(req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<PeerInfo>>().map(|ConnectInfo(peer)| *peer);
    if peer.is_some_and(|peer| peer.client_cert_verified) {
        return next.run(req).await;
    }
    tracing::warn!(path = %req.uri().path(), remote = ?peer.map(|p| p.remote), "refused: no client certificate");
    client_certificate_required()
}

/// The 403 answer: an [`ErrorBody`] with the code `client_certificate_required`.
pub fn client_certificate_required() -> Response {
    let body = ErrorBody {
        error: "client_certificate_required".into(),
        message: CLIENT_CERT_REQUIRED_MESSAGE.into(),
        leader: None,
        term: None,
        horizon: None,
    };
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Certificates for a local cluster

/// Certificates start this long before they are made, so that a machine whose clock is a
/// little behind the one that made them still accepts them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// When a certificate made by [`LocalCa`] is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a little before now (an hour, for clock skew) until `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Result<Self, PkiError> {
        let now = SystemTime::now();
        let not_before = now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(UNIX_EPOCH);
        let not_after = now.checked_add(lifetime).ok_or(PkiError::Validity("the lifetime is too long"))?;
        Ok(Validity { not_before, not_after })
    }
}

/// Why certificates cannot be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make the certificate '{name}': {source}")]
    Generate {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the certificate '{name}' needs at least one DNS name or IP address to be valid for")]
    NoNames { name: String },
    #[error("invalid certificate validity: {0}")]
    Validity(&'static str),
    #[error("'{stem}' cannot name certificate files: {reason}")]
    BadStem { stem: String, reason: &'static str },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A certificate authority made on the spot: for a local cluster ([`generate_local_pki`]) and
/// for tests, which also need expired certificates and a second, foreign CA.
pub struct LocalCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    /// Without the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl LocalCa {
    /// A new CA (a fresh P-256 key) named `common_name`. It may sign end certificates only,
    /// not further CAs.
    pub fn new(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        let generate = |source| PkiError::Generate { name: common_name.to_string(), source };
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity)?;
        let key = rcgen::KeyPair::generate().map_err(generate)?;
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(generate)?;
        Ok(LocalCa { issuer })
    }

    /// The CA's certificate: what `--tls-ca` names.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, to issue more certificates later.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for a program named `common_name`, valid for `names` (DNS names, or IP
    /// addresses such as `127.0.0.1`, which become IP entries) as a server and as a client.
    pub fn issue(&self, common_name: &str, names: &[&str], validity: Validity) -> Result<IssuedCert, PkiError> {
        let generate = |source| PkiError::Generate { name: common_name.to_string(), source };
        if names.is_empty() {
            return Err(PkiError::NoNames { name: common_name.to_string() });
        }
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(generate)?;
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        // Each program serves the others and calls them: one certificate for both roles.
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity)?;
        let key = rcgen::KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn distinguished_name(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut rcgen::CertificateParams, validity: Validity) -> Result<(), PkiError> {
    if validity.not_after <= validity.not_before {
        return Err(PkiError::Validity("it ends before it starts"));
    }
    params.not_before = to_offset_date_time(validity.not_before)?;
    params.not_after = to_offset_date_time(validity.not_after)?;
    Ok(())
}

/// Whole seconds (what X.509 keeps), refusing what X.509 dates cannot hold rather than
/// panicking as `OffsetDateTime::from(SystemTime)` would.
fn to_offset_date_time(at: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let seconds = at.duration_since(UNIX_EPOCH).map_err(|_| PkiError::Validity("a date before 1970"))?.as_secs();
    let seconds = i64::try_from(seconds).map_err(|_| PkiError::Validity("a date too far in the future"))?;
    let date = time::OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| PkiError::Validity("a date too far in the future"))?;
    if date.year() > 9999 {
        return Err(PkiError::Validity("a date after the year 9999"));
    }
    Ok(date)
}

/// The files [`generate_local_pki`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPki {
    /// `ca.pem`: what every program's `--tls-ca` names.
    pub ca: PathBuf,
    /// `ca-key.pem`, readable by its owner only.
    pub ca_key: PathBuf,
    pub programs: Vec<ProgramFiles>,
}

/// One program's certificate (`<stem>.pem`) and key (`<stem>-key.pem`, owner only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramFiles {
    pub stem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl LocalPki {
    /// The options of the program whose files are named `stem`.
    pub fn options(&self, stem: &str, client_auth: bool) -> Option<TlsOptions> {
        let program = self.programs.iter().find(|p| p.stem == stem)?;
        Some(TlsOptions {
            cert: Some(program.cert.clone()),
            key: Some(program.key.clone()),
            ca: Some(self.ca.clone()),
            client_auth,
        })
    }
}

/// Makes a CA for a local cluster and a certificate per program, and writes them into `dir`
/// (created if needed): `ca.pem`, `ca-key.pem`, and per program `<stem>.pem` and
/// `<stem>-key.pem`. `programs` pairs a file stem (such as `agent-8000`) with the DNS names and
/// IP addresses the program is reached at. Each certificate serves as the program's server and
/// client certificate, valid for `lifetime` from now.
///
/// Keys are written readable by their owner only. Existing files are replaced, each whole (a
/// reader never sees half a file).
pub fn generate_local_pki(dir: &Path, programs: &[(&str, &[&str])], lifetime: Duration) -> Result<LocalPki, PkiError> {
    // Every name checked before anything is made or written.
    for (i, (stem, names)) in programs.iter().enumerate() {
        check_stem(stem)?;
        if programs[..i].iter().any(|(other, _)| other == stem) {
            return Err(PkiError::BadStem { stem: stem.to_string(), reason: "it is given twice" });
        }
        if names.is_empty() {
            return Err(PkiError::NoNames { name: stem.to_string() });
        }
    }
    let validity = Validity::from_now(lifetime)?;
    let ca = LocalCa::new("replication cluster local CA", validity)?;
    let issued = programs
        .iter()
        .map(|(stem, names)| Ok((stem.to_string(), ca.issue(stem, names, validity)?)))
        .collect::<Result<Vec<_>, PkiError>>()?;

    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_path_buf(), source })?;
    let pki = LocalPki {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        programs: issued
            .iter()
            .map(|(stem, _)| ProgramFiles {
                stem: stem.clone(),
                cert: dir.join(format!("{stem}.pem")),
                key: dir.join(format!("{stem}-key.pem")),
            })
            .collect(),
    };
    write_file(&pki.ca_key, &ca.key_pem(), KEY_FILE_MODE)?;
    write_file(&pki.ca, &ca.cert_pem(), CERT_FILE_MODE)?;
    for (files, (_, cert)) in pki.programs.iter().zip(&issued) {
        write_file(&files.key, &cert.key_pem, KEY_FILE_MODE)?;
        write_file(&files.cert, &cert.cert_pem, CERT_FILE_MODE)?;
    }
    Ok(pki)
}

/// Private keys: the owner only.
const KEY_FILE_MODE: u32 = 0o600;
/// Certificates are public.
const CERT_FILE_MODE: u32 = 0o644;

/// A stem names two files in the same directory as `ca.pem`; it must not reach elsewhere or
/// collide with another file.
fn check_stem(stem: &str) -> Result<(), PkiError> {
    let bad = |reason| Err(PkiError::BadStem { stem: stem.to_string(), reason });
    if stem.is_empty() || stem.starts_with('.') {
        return bad("it must be a plain file name such as 'agent-8000'");
    }
    if !stem.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return bad("use letters, digits, '-', '_' and '.' only");
    }
    if stem == "ca" || stem.ends_with("-key") {
        return bad("'ca' and names ending in '-key' are taken by the CA's and the keys' files");
    }
    Ok(())
}

/// Writes beside and renames: the file appears whole, and with its mode from the start, even
/// where an older file with looser permissions was.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let write = || -> io::Result<()> {
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|source| PkiError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use axum::routing::get;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::http_client_tls;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    /// Every call in these tests answers in milliseconds; this only keeps a failing test from
    /// hanging.
    const CALL_TIMEOUT: Duration = Duration::from_secs(5);

    fn valid() -> Validity {
        Validity::from_now(DAY).unwrap()
    }

    fn expired() -> Validity {
        let now = SystemTime::now();
        Validity { not_before: now - 2 * DAY, not_after: now - DAY }
    }

    /// A directory holding the cluster's CA (`ca.pem`), and the means to add certificates to
    /// it: from that CA or another, valid or expired.
    struct Fixture {
        dir: tempfile::TempDir,
        ca: LocalCa,
        ca_path: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::new("cluster CA", valid()).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        Fixture { dir, ca, ca_path }
    }

    impl Fixture {
        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        /// The options of a program whose certificate `issuer` made, trusting the cluster's CA.
        fn program(&self, stem: &str, issuer: &LocalCa, validity: Validity, client_auth: bool) -> TlsOptions {
            let issued = issuer.issue(stem, &["127.0.0.1", "localhost"], validity).unwrap();
            TlsOptions {
                cert: Some(self.write(&format!("{stem}.pem"), &issued.cert_pem)),
                key: Some(self.write(&format!("{stem}-key.pem"), &issued.key_pem)),
                ca: Some(self.ca_path.clone()),
                client_auth,
            }
        }

        fn member(&self, stem: &str, client_auth: bool) -> TlsOptions {
            self.program(stem, &self.ca, valid(), client_auth)
        }

        fn ca_only(&self) -> TlsOptions {
            TlsOptions { ca: Some(self.ca_path.clone()), ..TlsOptions::default() }
        }
    }

    fn load(options: &TlsOptions) -> Tls {
        options.load().unwrap().unwrap()
    }

    /// `/public` tells whether the caller's certificate was verified; `/internal` is behind
    /// the client-certificate guard when `client_auth`.
    fn app(client_auth: bool) -> Router {
        let internal = guard_client_cert(Router::new().route("/internal", get(|| async { "internal" })), client_auth);
        Router::new()
            .route(
                "/public",
                get(|ConnectInfo(peer): ConnectInfo<PeerInfo>| async move {
                    format!("verified={}", peer.client_cert_verified)
                }),
            )
            .merge(internal)
    }

    struct Server {
        addr: SocketAddr,
        tls: bool,
        stop: oneshot::Sender<()>,
        done: JoinHandle<io::Result<()>>,
    }

    async fn start(router: Router, tls: Option<Tls>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tls.is_some();
        let done = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            serve(listener, router, tls.as_ref(), shutdown).await
        });
        Server { addr, tls: served, stop, done }
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("{}{path}", base_url(&self.addr.to_string(), self.tls))
        }
    }

    fn client(tls: &Tls) -> reqwest::Client {
        http_client_tls(None, CALL_TIMEOUT, Some(tls)).unwrap()
    }

    /// The error with its causes, where the TLS reason is.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    async fn call(client: &reqwest::Client, url: &str) -> Result<(StatusCode, String), String> {
        let resp = client.get(url).send().await.map_err(|e| chain(&e))?;
        let status = resp.status();
        Ok((status, resp.text().await.map_err(|e| chain(&e))?))
    }

    #[tokio::test]
    async fn an_https_call_works_and_plain_http_on_the_tls_port_fails_without_stopping_the_server() {
        let f = fixture();
        let server = start(app(false), Some(load(&f.member("server", false)))).await;
        let https = client(&load(&f.ca_only()));
        assert_eq!(call(&https, &server.url("/public")).await.unwrap(), (StatusCode::OK, "verified=false".into()));

        let plain = crate::http_client(None, CALL_TIMEOUT).unwrap();
        let url = format!("{}/public", base_url(&server.addr.to_string(), false));
        assert!(call(&plain, &url).await.is_err());

        // A fresh client, so that the call needs a new connection and a new handshake.
        let https = client(&load(&f.ca_only()));
        assert_eq!(call(&https, &server.url("/public")).await.unwrap().0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_client_trusting_another_ca_refuses_the_server() {
        let f = fixture();
        let server = start(app(false), Some(load(&f.member("server", false)))).await;
        let other = LocalCa::new("another CA", valid()).unwrap();
        let other_ca = f.write("other-ca.pem", &other.cert_pem());
        let stranger = client(&load(&TlsOptions { ca: Some(other_ca), ..TlsOptions::default() }));
        let error = call(&stranger, &server.url("/public")).await.unwrap_err();
        assert!(error.contains("UnknownIssuer"), "{error}");
    }

    #[tokio::test]
    async fn an_expired_server_certificate_is_refused() {
        let f = fixture();
        let server = start(app(false), Some(load(&f.program("server", &f.ca, expired(), false)))).await;
        let error = call(&client(&load(&f.ca_only())), &server.url("/public")).await.unwrap_err();
        assert!(error.to_lowercase().contains("expired"), "{error}");
    }

    #[tokio::test]
    async fn with_client_auth_internal_routes_need_a_certificate_from_the_ca_and_public_ones_do_not() {
        let f = fixture();
        let server = start(app(true), Some(load(&f.member("server", true)))).await;

        let anonymous = client(&load(&f.ca_only()));
        assert_eq!(call(&anonymous, &server.url("/public")).await.unwrap(), (StatusCode::OK, "verified=false".into()));
        let (status, body) = call(&anonymous, &server.url("/internal")).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "client_certificate_required", "message": CLIENT_CERT_REQUIRED_MESSAGE})
        );

        let member = client(&load(&f.member("client", false)));
        assert_eq!(call(&member, &server.url("/internal")).await.unwrap(), (StatusCode::OK, "internal".into()));
        assert_eq!(call(&member, &server.url("/public")).await.unwrap(), (StatusCode::OK, "verified=true".into()));

        // Refused at the handshake (the server verifies any certificate it is shown), or at
        // the latest by the guard.
        let other = LocalCa::new("another CA", valid()).unwrap();
        let foreign = f.program("foreign", &other, valid(), false);
        let stale = f.program("stale", &f.ca, expired(), false);
        for refused in [foreign, stale] {
            let caller = client(&load(&refused));
            if let Ok((status, body)) = call(&caller, &server.url("/internal")).await {
                assert_eq!(status, StatusCode::FORBIDDEN, "{refused:?}: {body}");
            }
        }
        // The server goes on serving the others.
        assert_eq!(call(&member, &server.url("/internal")).await.unwrap().0, StatusCode::OK);
    }

    #[tokio::test]
    async fn without_client_auth_the_guard_is_open_and_a_client_certificate_is_not_asked_for() {
        let f = fixture();
        let server = start(app(false), Some(load(&f.member("server", false)))).await;
        let member = client(&load(&f.member("client", false)));
        assert_eq!(call(&member, &server.url("/internal")).await.unwrap().0, StatusCode::OK);
        assert_eq!(call(&member, &server.url("/public")).await.unwrap().1, "verified=false");
    }

    #[tokio::test]
    async fn a_client_that_connects_and_sends_nothing_does_not_hold_up_the_others() {
        let f = fixture();
        let server = start(app(false), Some(load(&f.member("server", false)))).await;
        // Connected, and silent for longer than the call below may take.
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(CALL_TIMEOUT, call(&client(&load(&f.ca_only())), &server.url("/public")))
            .await
            .expect("the call waited for the silent client's handshake");
        assert_eq!(answer.unwrap().0, StatusCode::OK);
        assert!(started.elapsed() < HANDSHAKE_TIMEOUT);
    }

    async fn stops_gracefully(server: Server, caller: reqwest::Client) {
        // A kept-alive connection is open when shutdown begins; it must not hold the server.
        assert_eq!(call(&caller, &server.url("/public")).await.unwrap().0, StatusCode::OK);
        server.stop.send(()).unwrap();
        let served = tokio::time::timeout(CALL_TIMEOUT, server.done).await.expect("the server did not stop");
        served.unwrap().unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err(), "still listening after shutdown");
    }

    #[tokio::test]
    async fn plain_http_stops_gracefully() {
        let server = start(app(false), None).await;
        assert_eq!(
            call(&crate::http_client(None, CALL_TIMEOUT).unwrap(), &server.url("/public")).await.unwrap().1,
            "verified=false"
        );
        stops_gracefully(server, crate::http_client(None, CALL_TIMEOUT).unwrap()).await;
    }

    #[tokio::test]
    async fn https_stops_gracefully() {
        let f = fixture();
        let server = start(app(true), Some(load(&f.member("server", true)))).await;
        stops_gracefully(server, client(&load(&f.member("client", false)))).await;
    }

    #[tokio::test]
    async fn serving_https_without_a_certificate_is_refused_at_once() {
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = serve(listener, app(false), Some(&load(&f.ca_only())), std::future::pending()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("--tls-cert and --tls-key"), "{error}");
    }

    #[tokio::test]
    async fn a_request_without_peer_info_counts_as_without_a_certificate() {
        use tower::ServiceExt;
        let guarded = guard_client_cert(Router::new().route("/internal", get(|| async { "internal" })), true);
        let request = || axum::http::Request::builder().uri("/internal").body(axum::body::Body::empty()).unwrap();
        let refused = guarded.clone().oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);

        let mut verified = request();
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        verified.extensions_mut().insert(ConnectInfo(PeerInfo { remote, client_cert_verified: true }));
        assert_eq!(guarded.oneshot(verified).await.unwrap().status(), StatusCode::OK);
    }

    #[test]
    fn no_option_means_plain_http_and_the_ca_alone_a_client_that_does_not_serve() {
        assert!(TlsOptions::default().load().unwrap().is_none());
        let f = fixture();
        let client_only = load(&f.ca_only());
        assert!(client_only.server_config().is_none());
        assert!(!client_only.client_auth());
        let full = load(&f.member("server", true));
        assert!(full.server_config().is_some());
        assert!(full.client_auth());
        assert_eq!(full.scheme(), "https");
        assert_eq!(full.client_config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let err = f.ca_only().load_for_server("the supervisor").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("--tls-ca alone is not enough for the supervisor, which serves: give --tls-cert and --tls-key too")
        );
        assert!(f.member("server", false).load_for_server("an agent").unwrap().is_some());
        assert!(TlsOptions::default().load_for_server("an agent").unwrap().is_none());
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:8000", true), "https://127.0.0.1:8000");
        assert_eq!(base_url("db1:8000", false), "http://db1:8000");
    }

    /// Each misconfiguration is refused with a message that names the option and the file.
    #[test]
    fn misconfigurations_name_the_option_and_the_file() {
        let f = fixture();
        let good = f.member("good", false);
        let (cert, key, ca) = (good.cert.clone().unwrap(), good.key.clone().unwrap(), f.ca_path.clone());
        let other = f.member("other", false);
        let missing = f.dir.path().join("missing.pem");
        let garbage = f.write("garbage.pem", "not a certificate\n");
        let truncated = f.write("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let huge = f.write("huge.pem", &"x".repeat(MAX_PEM_FILE_BYTES as usize + 1));
        let some = |p: &PathBuf| Some(p.clone());
        let opts = |cert: Option<PathBuf>, key: Option<PathBuf>, ca: Option<PathBuf>, client_auth| TlsOptions {
            cert,
            key,
            ca,
            client_auth,
        };
        let show = |p: &PathBuf| p.display().to_string();
        let cases: Vec<(TlsOptions, Vec<String>)> = vec![
            (
                opts(some(&cert), None, some(&ca), false),
                vec!["--tls-cert".into(), show(&cert), "needs --tls-key".into()],
            ),
            (opts(None, some(&key), some(&ca), false), vec!["--tls-key".into(), show(&key), "needs --tls-cert".into()]),
            (opts(some(&cert), some(&key), None, false), vec![show(&cert), "needs --tls-ca".into()]),
            (opts(None, None, None, true), vec!["--tls-client-auth needs --tls-cert and --tls-key".into()]),
            (opts(None, None, some(&ca), true), vec!["--tls-client-auth needs --tls-cert and --tls-key".into()]),
            (opts(some(&cert), some(&key), None, true), vec!["--tls-client-auth needs --tls-ca".into()]),
            (opts(None, None, some(&missing), false), vec!["cannot read --tls-ca".into(), show(&missing)]),
            (opts(some(&missing), some(&key), some(&ca), false), vec!["cannot read --tls-cert".into(), show(&missing)]),
            (opts(some(&cert), some(&missing), some(&ca), false), vec!["cannot read --tls-key".into(), show(&missing)]),
            (
                opts(None, None, some(&garbage), false),
                vec!["--tls-ca".into(), show(&garbage), "holds no certificate".into()],
            ),
            (
                opts(None, None, some(&truncated), false),
                vec!["--tls-ca".into(), show(&truncated), "not valid PEM".into()],
            ),
            (opts(None, None, some(&huge), false), vec!["--tls-ca".into(), show(&huge), "larger than".into()]),
            (
                opts(some(&key), some(&key), some(&ca), false),
                vec!["--tls-cert".into(), show(&key), "holds no certificate".into()],
            ),
            (
                opts(some(&cert), some(&cert), some(&ca), false),
                vec!["--tls-key".into(), show(&cert), "holds no private key".into()],
            ),
            (
                opts(some(&cert), some(&garbage), some(&ca), false),
                vec!["--tls-key".into(), show(&garbage), "holds no private key".into()],
            ),
            (
                opts(some(&cert), other.key.clone(), some(&ca), false),
                vec![format!(
                    "--tls-key {} is not the key of the certificate in --tls-cert {}",
                    show(other.key.as_ref().unwrap()),
                    show(&cert)
                )],
            ),
            (opts(None, None, some(&f.dir.path().to_path_buf()), false), vec!["cannot read --tls-ca".into()]),
        ];
        for (options, expected) in cases {
            let error = match options.load() {
                Err(e) => e.to_string(),
                Ok(tls) => panic!("{options:?} was accepted: {tls:?}"),
            };
            for part in expected {
                assert!(error.contains(&part), "{options:?}: '{error}' does not say '{part}'");
            }
        }
    }

    #[test]
    fn an_error_about_a_key_file_does_not_quote_it() {
        let f = fixture();
        let good = f.member("good", false);
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!\n-----END PRIVATE KEY-----\n";
        let key = f.write("broken-key.pem", secret);
        let error = TlsOptions { key: Some(key), ..good }.load().unwrap_err().to_string();
        assert!(error.contains("not valid PEM") && !error.contains("c2VjcmV0"), "{error}");
    }

    #[tokio::test]
    async fn a_local_pki_serves_mutual_tls_and_keeps_its_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let names: &[&str] = &["127.0.0.1", "localhost"];
        let pki =
            generate_local_pki(&dir.path().join("certs"), &[("agent-8000", names), ("supervisor-7000", names)], DAY)
                .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.ca_key), 0o600);
        for files in &pki.programs {
            assert_eq!(mode(&files.key), 0o600, "{}", files.key.display());
            assert!(files.cert.exists());
        }
        assert_eq!(pki.ca, dir.path().join("certs/ca.pem"));
        assert_eq!(pki.programs[0].key, dir.path().join("certs/agent-8000-key.pem"));

        // Each certificate serves (the agent) and is a client certificate (the supervisor);
        // the agent is reached by IP address, which its certificate holds as one.
        let agent = load(&pki.options("agent-8000", true).unwrap());
        let supervisor = load(&pki.options("supervisor-7000", true).unwrap());
        let server = start(app(true), Some(agent)).await;
        assert_eq!(call(&client(&supervisor), &server.url("/internal")).await.unwrap().0, StatusCode::OK);

        // Made again, the files are replaced whole and the keys stay private.
        std::fs::set_permissions(&pki.ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = generate_local_pki(&dir.path().join("certs"), &[("agent-8000", names)], DAY).unwrap();
        assert_eq!(mode(&again.ca_key), 0o600);
    }

    #[test]
    fn local_pki_names_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let names: &[&str] = &["127.0.0.1"];
        for stem in ["", "../agent", "a/b", ".hidden", "ca", "agent-key", "agent 1"] {
            let error = generate_local_pki(dir.path(), &[("agent", names), (stem, names)], DAY).unwrap_err();
            assert!(matches!(error, PkiError::BadStem { .. }), "{stem}: {error}");
        }
        let twice = generate_local_pki(dir.path(), &[("agent", names), ("agent", names)], DAY).unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        let nameless = generate_local_pki(dir.path(), &[("agent", &[])], DAY).unwrap_err();
        assert!(matches!(nameless, PkiError::NoNames { .. }), "{nameless}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn validity_out_of_range_is_an_error_not_a_panic() {
        assert!(matches!(Validity::from_now(Duration::MAX), Err(PkiError::Validity(_))));
        let far = Validity::from_now(Duration::from_secs(10_000 * 365 * 24 * 3600)).unwrap();
        assert!(matches!(LocalCa::new("far", far), Err(PkiError::Validity(_))));
        let backwards = Validity { not_before: SystemTime::now(), not_after: SystemTime::now() - DAY };
        assert!(matches!(LocalCa::new("backwards", backwards), Err(PkiError::Validity(_))));
    }
}
