//! `wss://` to the OpenClaw gateway: which server certificates are trusted, and the connection
//! itself (TCP, then TLS with rustls when the URL says `wss`, then the WebSocket handshake).
//!
//! A gateway's certificate is trusted when it chains to one of the system's roots (the
//! platform's store, as `rustls-native-certs` reads it), or to a CA from an extra PEM file
//! (`ca_file`, for a private CA), and names the URL's host. With pins (`pin_sha256`, the
//! SHA-256 of the certificate itself, as `openssl x509 -noout -fingerprint -sha256` prints it),
//! exactly those certificates are trusted and nothing else: the way to reach a gateway with a
//! self-signed certificate, and a guard against a CA that issues to the wrong party. The
//! gateway's token never goes in the URL (a URL with credentials or a query is refused); it
//! travels in the first frame, inside TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Which certificates a `wss://` gateway may present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayTls {
    /// A PEM file of extra CA certificates, trusted beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Certificates trusted by their SHA-256; when any are given, only these.
    pub pins: Vec<CertificatePin>,
}

impl GatewayTls {
    /// From the settings as an operator writes them: a CA file, and pins as text.
    pub fn from_settings(
        ca_file: Option<PathBuf>,
        pins: &[impl AsRef<str>],
    ) -> Result<Self, TlsError> {
        Ok(Self {
            ca_file,
            pins: pins
                .iter()
                .map(|pin| pin.as_ref().parse())
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A certificate's SHA-256, as 64 hex digits (colons between bytes allowed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CertificatePin([u8; 32]);

impl fmt::Debug for CertificatePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl FromStr for CertificatePin {
    type Err = TlsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits: String = text
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let bytes = hex::decode(&digits)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| TlsError::Pin(text.chars().take(120).collect()))?;
        Ok(Self(bytes))
    }
}

/// Why a gateway connection cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read or holds no certificate.
    #[error("gateway CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A pin is not a SHA-256.
    #[error("certificate pin {0:?} is not a SHA-256 (64 hex digits, colons allowed)")]
    Pin(String),
    /// Nothing to trust a certificate by.
    #[error(
        "no certificate can be trusted: the system has no root certificates and no CA file or pin is given"
    )]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// How the client's TLS is set up: trust as `tls` says, ring for cryptography (the workspace's
/// rustls has more than one provider compiled in, so one is named).
fn client_config(tls: &GatewayTls) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let config = if tls.pins.is_empty() {
        builder
            .with_root_certificates(roots(tls.ca_file.as_deref())?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificates {
                pins: tls.pins.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The system's roots and those of `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries of the system store are skipped: one bad file must not cut every
    // gateway off; an empty store is refused below.
    let (_, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let failure = |reason: String| TlsError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| failure(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failure(e.to_string()))?;
        if certificates.is_empty() {
            return Err(failure("no PEM certificate in it".to_owned()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| failure(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// Trusts exactly the pinned certificates: the handshake's signature is still checked against
/// the certificate's key, so only the holder of a pinned certificate's key gets through.
#[derive(Debug)]
struct PinnedCertificates {
    pins: Vec<CertificatePin>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificates {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pins.contains(&CertificatePin(digest)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the gateway's certificate (sha256 {}) is not one of the pinned ones",
                hex::encode(digest)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The byte stream under the WebSocket: plain TCP for `ws://`, TLS over TCP for `wss://`.
#[derive(Debug)]
pub enum GatewayStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for GatewayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GatewayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A WebSocket to the gateway.
pub type GatewaySocket = WebSocketStream<GatewayStream>;

/// Why a gateway URL or its TLS settings cannot be used (trying again would not help).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL cannot be used.
    #[error("gateway URL {url:?}: {why}")]
    Url {
        /// The URL, without anything that could be a credential.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TLS settings are wrong.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A gateway URL checked once, with its TLS set up once (roots read, pins parsed), to connect
/// to again and again: a reconnect reads nothing from disk.
#[derive(Clone)]
pub struct GatewayEndpoint {
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    host: String,
    port: u16,
    /// The TLS client and the name the certificate must carry, for `wss://`.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl fmt::Debug for GatewayEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl GatewayEndpoint {
    /// Checks that `url` is a `ws://` or `wss://` URL with a host and no credentials or query
    /// (the token goes in the first frame, never in the URL), and sets up TLS as `tls` says
    /// for `wss://`.
    pub fn new(url: &str, tls: &GatewayTls) -> Result<Self, EndpointError> {
        // Shown without anything that could be a credential: no query, no user information.
        let shown = url.split(['?', '#']).next().unwrap_or_default();
        let shown = match shown.split_once("://") {
            Some((scheme, rest)) => {
                format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or_default())
            }
            None => String::new(),
        };
        let refused = |why| EndpointError::Url {
            url: shown.clone(),
            why,
        };
        let request = url
            .into_client_request()
            .map_err(|_| refused("not a ws:// or wss:// URL"))?;
        let uri = request.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(refused("must be ws:// or wss:// with a host")),
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(refused("must be ws:// or wss:// with a host"));
        }
        if uri.query().is_some() || uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(refused(
                "must carry no credentials or query: the token is read from the token file and sent inside the connection",
            ));
        }
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| refused("the host is not a DNS name or IP address"))?;
            Some((client_config(tls)?, name))
        } else {
            None
        };
        Ok(Self {
            request,
            host,
            port,
            tls,
        })
    }

    /// Opens a WebSocket to the gateway; an error says why, and trying again may succeed.
    pub async fn connect(&self) -> Result<GatewaySocket, String> {
        let (host, port) = (self.host.as_str(), self.port);
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            Some((config, name)) => {
                let tls_stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
                GatewayStream::Tls(Box::new(tls_stream))
            }
            None => GatewayStream::Plain(tcp),
        };
        let (socket, _) = tokio_tungstenite::client_async(self.request.clone(), stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_read_as_openssl_prints_them_and_nothing_else() {
        let colons = "AB:".repeat(31) + "AB";
        let pin: CertificatePin = colons.parse().unwrap();
        assert_eq!(pin, CertificatePin([0xab; 32]));
        assert_eq!(
            format!("sha256:{}", "ab".repeat(32))
                .parse::<CertificatePin>()
                .unwrap(),
            pin
        );
        assert!("ab".repeat(31).parse::<CertificatePin>().is_err());
        assert!("zz".repeat(32).parse::<CertificatePin>().is_err());
    }

    #[test]
    fn a_url_with_credentials_or_a_query_is_refused_without_echoing_them() {
        let tls = GatewayTls::default();
        let plain = GatewayEndpoint::new("ws://127.0.0.1:18789", &tls).unwrap();
        assert_eq!((plain.port, plain.tls.is_some()), (18789, false));
        let secure = GatewayEndpoint::new("wss://gateway.example/ws", &tls).unwrap();
        assert_eq!((secure.port, secure.tls.is_some()), (443, true));
        for url in [
            "wss://gateway.example/?token=secret-token",
            "wss://user:secret-token@gateway.example/",
            "http://gateway.example/",
            "wss:///nohost",
        ] {
            let error = GatewayEndpoint::new(url, &tls).unwrap_err();
            assert!(matches!(error, EndpointError::Url { .. }), "{error}");
            assert!(!error.to_string().contains("secret-token"), "{error}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let tls = GatewayTls {
            ca_file: Some(empty),
            pins: Vec::new(),
        };
        assert!(matches!(client_config(&tls), Err(TlsError::CaFile { .. })));
    }
}
