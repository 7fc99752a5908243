//! The API listener's TLS: its server certificate, and client certificates
//! (mTLS), which are requested but never required — a bearer token works
//! on the same listener.
//!
//! The handshake accepts a client certificate only when the client proves
//! it holds the key and the certificate is signed by one of clm's own CA
//! certificates. Every CA clm has — roots and intermediates, whatever their
//! status — is a trust anchor, so a client may send its leaf alone; what a
//! path through the root would add (is the issuer still trusted?) is asked
//! of clm's records on every request instead. Validity dates, key usage,
//! revocation and binding are not judged here but per request
//! (`Clm::authenticate_client_certificate`): the client gets a 401 that says
//! why, and a revocation applies inside an open connection. A certificate
//! from any other CA fails the handshake.

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::HttpError;
use crate::service::{Clm, ConnectionAudit};

/// How often the trust anchors are re-read, so that a CA created on any
/// instance is accepted here within this time.
const ANCHOR_REFRESH: Duration = Duration::from_secs(10);

/// The client certificate of one TLS connection, kept with the connection
/// for every request made on it.
pub struct PeerCertificate {
    /// The client's own certificate (the first of the chain it sent).
    pub der: CertificateDer<'static>,
    pub audit: ConnectionAudit,
}

/// `HttpServer::on_connect`: keeps the certificate a client authenticated
/// the handshake with.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    let Some(tls) = conn.downcast_ref::<TlsStream<TcpStream>>() else {
        return;
    };
    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        ext.insert(Arc::new(PeerCertificate {
            der: leaf.clone().into_owned(),
            audit: ConnectionAudit::default(),
        }));
    }
}

/// clm's CA certificates as trust anchors, replaced as CAs come and go.
#[derive(Debug, Default)]
pub struct ClientCas(RwLock<Arc<Vec<TrustAnchor<'static>>>>);

impl ClientCas {
    fn current(&self) -> Arc<Vec<TrustAnchor<'static>>> {
        match self.0.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, ders: &[Vec<u8>]) {
        let anchors: Vec<TrustAnchor<'static>> = ders
            .iter()
            .filter_map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map(|a| a.to_owned())
                    .map_err(|e| tracing::warn!(error = %e, "a CA certificate is no trust anchor"))
                    .ok()
            })
            .collect();
        match self.0.write() {
            Ok(mut a) => *a = Arc::new(anchors),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(anchors),
        }
    }

    /// Reads the anchors now, then every [`ANCHOR_REFRESH`] in the
    /// background. A failed read keeps the previous set.
    pub async fn load_and_follow(clm: Clm) -> Arc<Self> {
        let cas = Arc::new(Self::default());
        let refresh = |cas: Arc<Self>, clm: Clm| async move {
            match clm.client_ca_certificates().await {
                Ok(ders) => cas.replace(&ders),
                Err(e) => {
                    tracing::warn!(error = %e.log_message(), "client CA certificates not re-read")
                }
            }
        };
        refresh(cas.clone(), clm.clone()).await;
        let follower = cas.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ANCHOR_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                refresh(follower.clone(), clm.clone()).await;
            }
        });
        cas
    }
}

#[derive(Debug)]
struct ClmClientVerifier {
    cas: Arc<ClientCas>,
    algs: WebPkiSupportedAlgorithms,
}

/// Key usage is judged per request (401
/// `client_certificate_not_for_client_auth`), not in the handshake.
struct AnyPurpose;

impl webpki::ExtendedKeyUsageValidator for AnyPurpose {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

impl ClientCertVerifier for ClmClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No CA names are sent: the set changes at run time and rustls wants
    /// a slice that lives as long as the verifier. Clients send the
    /// certificate they are configured with.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let anchors = self.cas.current();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(refused)?;
        let signed_by_clm = |time| {
            cert.verify_for_usage(
                self.algs.all,
                &anchors,
                intermediates,
                time,
                AnyPurpose,
                None,
                None,
            )
            .map(|_| ())
        };
        // Only the signatures count here, judged as of a moment the
        // certificate was valid; its dates are refused per request with a
        // reason the client can read (`client_certificate_expired`).
        let checked = match signed_by_clm(now) {
            Err(webpki::Error::CertExpired { not_after, .. }) => signed_by_clm(not_after),
            Err(webpki::Error::CertNotValidYet { not_before, .. }) => signed_by_clm(not_before),
            other => other,
        };
        checked
            .map(|()| ClientCertVerified::assertion())
            .map_err(refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A handshake refused: logged, counted, and told to the client as a TLS
/// alert.
fn refused(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    tracing::info!(error = %e, "client certificate refused in the TLS handshake");
    metrics::counter!("clm_client_certificate_auth_total", "outcome" => "tls_refused").increment(1);
    match e {
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        webpki::Error::BadDer | webpki::Error::BadDerTime | webpki::Error::TrailingData(_) => {
            C::BadEncoding
        }
        other => C::Other(rustls::OtherError(Arc::new(other))),
    }
    .into()
}

/// The listener's configuration: `server.crt` (chain) and `server.key`
/// from `dir`, client certificates from `client_cas`.
pub fn server_config(
    dir: &Path,
    client_cas: Arc<ClientCas>,
) -> Result<rustls::ServerConfig, HttpError> {
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    let tls_err = |path: &Path, message: String| HttpError::Tls {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_err(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&cert_path, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| tls_err(&key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ClmClientVerifier {
        cas: client_cas,
        algs: provider.signature_verification_algorithms,
    });
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(dir, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(dir, e.to_string()))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

    use super::*;

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: Vec<u8>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { params, key, der }
    }

    fn leaf(ca: &Ca, days: std::ops::Range<i64>, eku: ExtendedKeyUsagePurpose) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["client.test".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.start);
        params.not_after = now + time::Duration::days(days.end);
        params.extended_key_usages = vec![eku];
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        params.signed_by(&key, &issuer).unwrap().der().to_vec()
    }

    fn verifier(anchors: &[&Ca]) -> ClmClientVerifier {
        let cas = ClientCas::default();
        cas.replace(&anchors.iter().map(|c| c.der.clone()).collect::<Vec<_>>());
        ClmClientVerifier {
            cas: Arc::new(cas),
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn verify(v: &ClmClientVerifier, der: &[u8]) -> Result<ClientCertVerified, rustls::Error> {
        v.verify_client_cert(&CertificateDer::from(der), &[], UnixTime::now())
    }

    #[test]
    fn only_certificates_signed_by_a_clm_ca_pass_the_handshake() {
        let (clm, other) = (ca("clm Intermediate"), ca("Foreign CA"));
        let v = verifier(&[&clm]);
        assert!(!v.client_auth_mandatory() && v.offer_client_auth());
        verify(&v, &leaf(&clm, -1..30, ExtendedKeyUsagePurpose::ClientAuth)).unwrap();
        match verify(
            &v,
            &leaf(&other, -1..30, ExtendedKeyUsagePurpose::ClientAuth),
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {}
            other => panic!("{other:?}"),
        }
        // A CA's own certificate is no client certificate.
        assert!(verify(&v, &clm.der).is_err());
        // The set follows clm's CAs.
        v.cas.replace(std::slice::from_ref(&other.der));
        verify(
            &v,
            &leaf(&other, -1..30, ExtendedKeyUsagePurpose::ClientAuth),
        )
        .unwrap();
        assert!(verify(&v, &leaf(&clm, -1..30, ExtendedKeyUsagePurpose::ClientAuth)).is_err());
    }

    /// Dates and key usage are the per-request check's, which can tell the
    /// client why; the handshake still insists on clm's signature.
    #[test]
    fn dates_and_key_usage_are_left_to_the_request() {
        let (clm, other) = (ca("clm Intermediate"), ca("Foreign CA"));
        let v = verifier(&[&clm]);
        for der in [
            leaf(&clm, -30..-1, ExtendedKeyUsagePurpose::ClientAuth),
            leaf(&clm, 1..30, ExtendedKeyUsagePurpose::ClientAuth),
            leaf(&clm, -1..30, ExtendedKeyUsagePurpose::ServerAuth),
        ] {
            verify(&v, &der).unwrap();
        }
        assert!(
            verify(
                &v,
                &leaf(&other, -30..-1, ExtendedKeyUsagePurpose::ClientAuth)
            )
            .is_err()
        );
    }
}
