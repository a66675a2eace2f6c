//! The SPIFFE Workload API (as served by the SPIRE agent) as an identity source.
//!
//! `FetchX509SVID` is a server-streaming gRPC call: the agent sends the SVID and bundles at
//! once and again whenever they change. gRPC is HTTP/2 with length-prefixed protobuf messages,
//! so this speaks it directly with hyper and prost instead of pulling in a second HTTP/2 stack.
//! Every update goes through the same validation as files; the stream is re-established with
//! backoff when the agent goes away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::UnixStream;
use tracing::{info, warn};

use crate::bundle::TrustBundles;
use crate::grpc;
use crate::rotation::{self, Update};
use crate::source::{Identity, IdentityStore};

/// The messages of `workload.proto` this client uses.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidResponse {
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509Svid>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: std::collections::HashMap<String, Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509Svid {
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        /// DER certificates, leaf first, concatenated.
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        /// PKCS#8 DER.
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        /// DER CA certificates of the SVID's trust domain, concatenated.
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        #[prost(string, tag = "5")]
        pub hint: String,
    }
}

pub const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
/// The header every Workload API call must carry (a guard against SSRF through proxies).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Where the agent listens: `unix:///path`, `unix:/path` or a plain path.
pub fn socket_path(uri: &str) -> Result<PathBuf, String> {
    let path = uri
        .strip_prefix("unix://")
        .or_else(|| uri.strip_prefix("unix:"))
        .unwrap_or(uri);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(format!(
            "{uri:?} is not a unix socket address (expected unix:///path/to/agent.sock)"
        ))
    }
}

/// An open `FetchX509SVID` stream.
pub struct SvidStream {
    body: Incoming,
    buf: BytesMut,
}

impl SvidStream {
    /// Connects to the agent and starts the call.
    pub async fn open(socket: &Path) -> Result<Self, String> {
        let unix = UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "cannot connect to the Workload API at {}: {e}",
                socket.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(unix))
                .await
                .map_err(|e| format!("HTTP/2 handshake with the Workload API failed: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::post(format!("http://localhost{FETCH_X509_SVID}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(SECURITY_HEADER, "true")
            .body(Full::new(grpc::frame(&proto::X509SvidRequest {})))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("FetchX509SVID failed: {e}"))?;
        if let Some(status) = grpc::failure(resp.headers()) {
            return Err(format!("Workload API error: {status}"));
        }
        if resp.status() != http::StatusCode::OK {
            return Err(format!("FetchX509SVID answered HTTP {}", resp.status()));
        }
        Ok(SvidStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// The next update; `Ok(None)` when the agent ended the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<proto::X509SvidResponse>, String> {
        loop {
            if let Some(msg) = grpc::take_message(&mut self.buf, 16 << 20)
                .map_err(|e| format!("Workload API stream: {e}"))?
            {
                return proto::X509SvidResponse::decode(msg)
                    .map(Some)
                    .map_err(|e| format!("malformed X509SVIDResponse: {e}"));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(format!("Workload API stream broke: {e}")),
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        if let Some(status) = grpc::failure(trailers) {
                            return Err(format!("Workload API error: {status}"));
                        }
                    } else if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Splits concatenated DER certificates.
pub fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 2 || bytes[0] != 0x30 {
            return Err("not a DER certificate sequence".into());
        }
        let (header, len) = match bytes[1] {
            n if n < 0x80 => (2, n as usize),
            n => {
                let k = (n & 0x7f) as usize;
                if k == 0 || k > 4 || bytes.len() < 2 + k {
                    return Err("bad DER length".into());
                }
                (
                    2 + k,
                    bytes[2..2 + k]
                        .iter()
                        .fold(0usize, |acc, b| (acc << 8) | *b as usize),
                )
            }
        };
        let end = header
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or("truncated DER certificate")?;
        out.push(CertificateDer::from(bytes[..end].to_vec()));
        bytes = &bytes[end..];
    }
    Ok(out)
}

/// Builds and validates an identity from an update (the first SVID is the default one).
pub fn identity_from(
    resp: &proto::X509SvidResponse,
    trust_domain: &str,
) -> Result<Identity, String> {
    let svid = resp.svids.first().ok_or("the update holds no SVID")?;
    let chain = split_der(&svid.x509_svid).map_err(|e| format!("SVID {}: {e}", svid.spiffe_id))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone()));
    let mut bundles = TrustBundles::default();
    bundles
        .insert(
            trust_domain,
            split_der(&svid.bundle).map_err(|e| format!("bundle: {e}"))?,
        )
        .map_err(|e| format!("bundle: {e}"))?;
    for (td, der) in &resp.federated_bundles {
        let td = td.strip_prefix("spiffe://").unwrap_or(td);
        let certs = split_der(der).map_err(|e| format!("federated bundle of {td}: {e}"))?;
        bundles
            .insert(td, certs)
            .map_err(|e| format!("federated bundle of {td}: {e}"))?;
    }
    Identity::from_parts(chain, key, bundles, trust_domain, &crate::crypto_provider())
        .map_err(|(part, e)| format!("SVID {} ({part:?}): {e}", svid.spiffe_id))
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Waits for the first valid SVID, retrying with backoff while the agent is unreachable.
pub async fn first_identity(socket: &Path, trust_domain: &str) -> (Identity, SvidStream) {
    let mut backoff = BACKOFF_START;
    loop {
        match SvidStream::open(socket).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(update)) => match identity_from(&update, trust_domain) {
                        Ok(identity) => {
                            info!(id = %identity.id, socket = %socket.display(), "SVID received from the Workload API");
                            return (identity, stream);
                        }
                        Err(e) => {
                            warn!(error = %e, "Workload API update refused; waiting for the next")
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "Workload API stream failed");
                        break;
                    }
                }
            },
            Err(e) => warn!(error = %e, retry_in = ?backoff, "waiting for the SPIRE agent"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Applies every later update to the store, reconnecting with backoff, until the process ends;
/// `on_update` hears what each update did.
pub async fn follow(
    socket: PathBuf,
    mut stream: SvidStream,
    store: Arc<IdentityStore>,
    trust_domain: String,
    on_update: impl Fn(Update),
) {
    let mut backoff = BACKOFF_START;
    loop {
        loop {
            match stream.next().await {
                Ok(Some(update)) => {
                    backoff = BACKOFF_START;
                    on_update(rotation::apply(
                        &store,
                        identity_from(&update, &trust_domain),
                        rotation::Trigger::WorkloadApi,
                    ));
                }
                Ok(None) => {
                    warn!("the Workload API ended the stream; reconnecting");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "Workload API stream failed; reconnecting");
                    break;
                }
            }
        }
        stream = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match SvidStream::open(&socket).await {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "the SPIRE agent is unreachable; keeping the current SVID")
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_parsed() {
        assert_eq!(
            socket_path("unix:///run/spire/agent.sock").unwrap(),
            PathBuf::from("/run/spire/agent.sock")
        );
        assert_eq!(
            socket_path("unix:/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:8081").is_err());
    }

    #[test]
    fn concatenated_der_certificates_are_split_and_garbage_refused() {
        let a = [0x30, 0x03, 1, 2, 3];
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let joined: Vec<u8> = a.iter().chain(long.iter()).copied().collect();
        let certs = split_der(&joined).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].as_ref().len(), 3 + 0x80);
        assert!(split_der(&[0x30, 0x05, 1]).is_err());
        assert!(split_der(&[0x02, 0x01, 0]).is_err());
    }
}
