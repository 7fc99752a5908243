//! OCSP (RFC 6960) encoding: parsing requests from the network, building
//! and signing responses, and the fixed error answers. The parser reads
//! only what it needs with bounds on everything, and treats trailing or
//! truncated data as malformed; it never panics on any input.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::PkiError;
use super::crl::generalized_time;
use super::signer::{ToBeSigned, subject_public_key_bits};
use crate::domain::{RevocationReason, Signer, der};

/// More CertIDs than this in one request is refused as malformed.
pub const MAX_CERT_IDS: usize = 16;
/// RFC 8954: nonces are 1 to 32 octets.
const MAX_NONCE: usize = 32;

const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
const OID_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// Why a request was refused. All of them mean `malformedRequest`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("malformed OCSP request: {0}")]
    Malformed(&'static str),
}

/// The hash a CertID was computed with.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
}

impl HashAlgorithm {
    /// Every hash a CertID may name: the answers cached about one serial
    /// are at most one per hash.
    pub const ALL: [HashAlgorithm; 2] = [HashAlgorithm::Sha1, HashAlgorithm::Sha256];

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha1 => {
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
                    .as_ref()
                    .to_vec()
            }
            HashAlgorithm::Sha256 => Sha256::digest(data).to_vec(),
        }
    }
}

/// One CertID as the client sent it; answers echo its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertId {
    raw: Vec<u8>,
    hash: HashAlgorithm,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    /// Big-endian magnitude, no sign byte.
    serial: Vec<u8>,
}

impl CertId {
    pub fn hash_algorithm(&self) -> HashAlgorithm {
        self.hash
    }

    /// The serial's magnitude, as clm stores serials (hex of these bytes).
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// Bytes it holds on the heap: what a cache of answers counts.
    pub fn heap_bytes(&self) -> usize {
        [&self.raw, &self.name_hash, &self.key_hash, &self.serial]
            .iter()
            .map(|v| v.capacity())
            .sum()
    }

    /// A CertID naming `serial` with empty issuer hashes, for tests of
    /// what is kept per CertID.
    #[cfg(test)]
    pub(crate) fn for_tests(hash: HashAlgorithm, serial: &[u8]) -> Self {
        Self {
            raw: Vec::new(),
            hash,
            name_hash: Vec::new(),
            key_hash: Vec::new(),
            serial: serial.to_vec(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspRequest {
    pub cert_ids: Vec<CertId>,
    /// The nonce extension's extnValue contents, echoed unchanged.
    pub nonce: Option<Vec<u8>>,
}

/// What a CA's CertIDs must carry, for both hash algorithms.
#[derive(Clone, Debug)]
pub struct IssuerHashes {
    sha1: (Vec<u8>, Vec<u8>),
    sha256: (Vec<u8>, Vec<u8>),
}

impl IssuerHashes {
    /// Hashes of the CA certificate's subject Name and of its
    /// subjectPublicKey bits (RFC 6960 §4.1.1).
    pub fn of(ca_certificate_der: &[u8]) -> Result<Self, PkiError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(ca_certificate_der).map_err(PkiError::encoding)?;
        let name = cert.subject().as_raw();
        let key = cert.public_key().subject_public_key.data.as_ref();
        let pair = |h: HashAlgorithm| (h.digest(name), h.digest(key));
        Ok(Self {
            sha1: pair(HashAlgorithm::Sha1),
            sha256: pair(HashAlgorithm::Sha256),
        })
    }

    /// Whether `id` names this issuer.
    pub fn names(&self, id: &CertId) -> bool {
        let (name, key) = match id.hash {
            HashAlgorithm::Sha1 => &self.sha1,
            HashAlgorithm::Sha256 => &self.sha256,
        };
        *name == id.name_hash && *key == id.key_hash
    }
}

/// (contents, the whole TLV, what follows it).
type Taken<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Splits one TLV of the expected `tag` off `input`.
fn take(input: &[u8], tag: u8) -> Result<Taken<'_>, OcspError> {
    let (t, content, rest) = der::read_tlv(input).ok_or(OcspError::Malformed("bad length"))?;
    if t != tag {
        return Err(OcspError::Malformed("unexpected field"));
    }
    Ok((content, &input[..input.len() - rest.len()], rest))
}

/// Parses a DER OCSPRequest. Signed requests are accepted and their
/// signature ignored (clm answers anyone).
pub fn parse_request(der: &[u8]) -> Result<OcspRequest, OcspError> {
    let (request, _, rest) = take(der, 0x30)?;
    if !rest.is_empty() {
        return Err(OcspError::Malformed("trailing data"));
    }
    let (tbs, _, after_tbs) = take(request, 0x30)?;
    // optionalSignature [0] EXPLICIT, nothing else.
    if !after_tbs.is_empty() {
        let (_, _, rest) = take(after_tbs, 0xa0)?;
        if !rest.is_empty() {
            return Err(OcspError::Malformed("trailing data"));
        }
    }
    let mut fields = tbs;
    if fields.first() == Some(&0xa0) {
        let (version, _, rest) = take(fields, 0xa0)?;
        if version != [0x02, 0x01, 0x00] {
            return Err(OcspError::Malformed("unsupported version"));
        }
        fields = rest;
    }
    if fields.first() == Some(&0xa1) {
        fields = take(fields, 0xa1)?.2; // requestorName: not used
    }
    let (mut list, _, rest) = take(fields, 0x30)?;
    let mut cert_ids = Vec::new();
    while !list.is_empty() {
        if cert_ids.len() == MAX_CERT_IDS {
            return Err(OcspError::Malformed("too many certificates in one request"));
        }
        let (request, _, next) = take(list, 0x30)?;
        let (_, raw, single_ext) = take(request, 0x30)?;
        if !single_ext.is_empty() {
            let (_, _, rest) = take(single_ext, 0xa0)?;
            if !rest.is_empty() {
                return Err(OcspError::Malformed("trailing data"));
            }
        }
        cert_ids.push(parse_cert_id(raw)?);
        list = next;
    }
    if cert_ids.is_empty() {
        return Err(OcspError::Malformed("no certificates asked about"));
    }
    let mut nonce = None;
    if !rest.is_empty() {
        let (extensions, _, rest) = take(rest, 0xa2)?;
        if !rest.is_empty() {
            return Err(OcspError::Malformed("trailing data"));
        }
        let (mut list, _, rest) = take(extensions, 0x30)?;
        if !rest.is_empty() {
            return Err(OcspError::Malformed("trailing data"));
        }
        while !list.is_empty() {
            let (ext, _, next) = take(list, 0x30)?;
            let (oid, _, mut ext_rest) = take(ext, 0x06)?;
            if ext_rest.first() == Some(&0x01) {
                ext_rest = take(ext_rest, 0x01)?.2;
            }
            let (value, _, ext_rest) = take(ext_rest, 0x04)?;
            if !ext_rest.is_empty() {
                return Err(OcspError::Malformed("trailing data"));
            }
            if oid == OID_NONCE {
                let (inner, _, trailing) = take(value, 0x04)?;
                if inner.is_empty() || inner.len() > MAX_NONCE || !trailing.is_empty() {
                    return Err(OcspError::Malformed("a nonce must be 1 to 32 octets"));
                }
                nonce = Some(value.to_vec());
            }
            list = next;
        }
    }
    Ok(OcspRequest { cert_ids, nonce })
}

fn parse_cert_id(raw: &[u8]) -> Result<CertId, OcspError> {
    let (fields, _, _) = take(raw, 0x30)?;
    let (algorithm, _, rest) = take(fields, 0x30)?;
    let (oid, _, params) = take(algorithm, 0x06)?;
    if !(params.is_empty() || params == der::NULL) {
        return Err(OcspError::Malformed("bad hash algorithm parameters"));
    }
    let hash = match oid {
        OID_SHA1 => HashAlgorithm::Sha1,
        OID_SHA256 => HashAlgorithm::Sha256,
        _ => return Err(OcspError::Malformed("unsupported hash algorithm")),
    };
    let (name_hash, _, rest) = take(rest, 0x04)?;
    let (key_hash, _, rest) = take(rest, 0x04)?;
    let (serial, _, rest) = take(rest, 0x02)?;
    if !rest.is_empty() {
        return Err(OcspError::Malformed("trailing data"));
    }
    let digest_len = match hash {
        HashAlgorithm::Sha1 => 20,
        HashAlgorithm::Sha256 => 32,
    };
    if name_hash.len() != digest_len || key_hash.len() != digest_len {
        return Err(OcspError::Malformed("hash of the wrong length"));
    }
    // A positive INTEGER of at most 20 octets (plus a sign byte).
    let magnitude = match serial {
        [0x00, rest @ ..] if rest.first().is_some_and(|b| b & 0x80 != 0) => rest,
        [first, ..] if first & 0x80 == 0 && *first != 0 => serial,
        _ => return Err(OcspError::Malformed("the serial is not a positive integer")),
    };
    if magnitude.len() > 20 {
        return Err(OcspError::Malformed("the serial is too long"));
    }
    Ok(CertId {
        raw: raw.to_vec(),
        hash,
        name_hash: name_hash.to_vec(),
        key_hash: key_hash.to_vec(),
        serial: magnitude.to_vec(),
    })
}

/// An OCSPRequest for the certificate with `serial` (its magnitude, as
/// clm stores serials) issued by the CA whose certificate is
/// `ca_certificate_der`: what a relying party sends. With a `nonce`, the
/// RFC 8954 nonce extension carries it; without, the request is the one
/// `openssl ocsp -no_nonce` makes.
pub fn encode_request(
    ca_certificate_der: &[u8],
    serial: &[u8],
    hash: HashAlgorithm,
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, ca) = X509Certificate::from_der(ca_certificate_der).map_err(PkiError::encoding)?;
    let name_hash = hash.digest(ca.subject().as_raw());
    let key_hash = hash.digest(ca.public_key().subject_public_key.data.as_ref());
    let oid = match hash {
        HashAlgorithm::Sha1 => OID_SHA1,
        HashAlgorithm::Sha256 => OID_SHA256,
    };
    let magnitude: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    if magnitude.is_empty() || magnitude.len() > 20 {
        return Err(PkiError::encoding("a serial must be 1 to 20 octets"));
    }
    let cert_id = der::sequence(&[
        &der::sequence(&[&der::tlv(0x06, oid), &der::NULL]),
        &der::octet_string(&name_hash),
        &der::octet_string(&key_hash),
        &der::unsigned_integer(&magnitude),
    ]);
    let request_list = der::sequence(&[&der::sequence(&[&cert_id])]);
    let tbs = match nonce {
        None => der::sequence(&[&request_list]),
        Some(n) => {
            if n.is_empty() || n.len() > MAX_NONCE {
                return Err(PkiError::encoding("a nonce must be 1 to 32 octets"));
            }
            let ext = der::sequence(&[
                &der::tlv(0x06, OID_NONCE),
                &der::octet_string(&der::octet_string(n)),
            ]);
            der::sequence(&[&request_list, &der::tlv(0xa2, &der::sequence(&[&ext]))])
        }
    };
    Ok(der::sequence(&[&tbs]))
}

/// The status of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked {
        at: DateTime<Utc>,
        reason: Option<RevocationReason>,
    },
    Unknown,
}

#[derive(Clone, Debug)]
pub struct SingleResponse {
    pub cert_id: CertId,
    pub status: CertStatus,
    pub this_update: DateTime<Utc>,
    pub next_update: DateTime<Utc>,
}

/// OCSPResponseStatus values clm sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    Unauthorized = 6,
}

/// An OCSPResponse carrying only an error status.
pub fn error_response(status: ResponseStatus) -> Vec<u8> {
    der::sequence(&[&der::tlv(0x0a, &[status as u8])])
}

/// The ResponseData a delegated responder signs: responderID byKey,
/// producedAt, the single responses and the nonce, echoed.
pub fn prepare_response(
    signer: &dyn Signer,
    produced_at: DateTime<Utc>,
    responses: &[SingleResponse],
    nonce: Option<&[u8]>,
) -> Result<ToBeSigned, PkiError> {
    let key_bits = subject_public_key_bits(signer.public_key_spki())?;
    let key_hash = HashAlgorithm::Sha1.digest(&key_bits);
    let responder_id = der::tlv(0xa2, &der::octet_string(&key_hash));
    let mut singles = Vec::with_capacity(responses.len() * 128);
    for r in responses {
        let status = match &r.status {
            CertStatus::Good => vec![0x80, 0x00],
            CertStatus::Unknown => vec![0x82, 0x00],
            CertStatus::Revoked { at, reason } => {
                let mut info = generalized_time(*at);
                if let Some(reason) = reason {
                    info.extend(der::tlv(0xa0, &der::tlv(0x0a, &[reason.code()])));
                }
                der::tlv(0xa1, &info)
            }
        };
        singles.extend(der::sequence(&[
            &r.cert_id.raw,
            &status,
            &generalized_time(r.this_update),
            &der::tlv(0xa0, &generalized_time(r.next_update)),
        ]));
    }
    let mut parts = vec![
        responder_id,
        generalized_time(produced_at),
        der::tlv(0x30, &singles),
    ];
    if let Some(nonce) = nonce {
        let ext = der::sequence(&[&der::tlv(0x06, OID_NONCE), &der::octet_string(nonce)]);
        parts.push(der::tlv(0xa1, &der::sequence(&[&ext])));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    ToBeSigned::new(
        der::sequence(&refs),
        signer.public_key_spki(),
        signer.algorithm(),
    )
}

/// Signs `responses` as the responder whose certificate is
/// `responder_certificate_der` and returns the whole OCSPResponse, the
/// responder certificate included. Blocking (it signs).
pub fn sign_response(
    signer: &dyn Signer,
    responder_certificate_der: &[u8],
    produced_at: DateTime<Utc>,
    responses: &[SingleResponse],
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, PkiError> {
    let tbs = prepare_response(signer, produced_at, responses, nonce)?;
    let signature = tbs.signature(signer)?;
    let basic = der::sequence(&[
        tbs.tbs_der(),
        tbs.signature_algorithm(),
        &der::bit_string(&signature),
        &der::tlv(0xa0, &der::sequence(&[responder_certificate_der])),
    ]);
    let bytes = der::sequence(&[&der::tlv(0x06, OID_BASIC), &der::octet_string(&basic)]);
    Ok(der::sequence(&[
        &der::tlv(0x0a, &[0x00]),
        &der::tlv(0xa0, &bytes),
    ]))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use chrono::Duration;

    use super::*;
    use crate::domain::KeyAlgorithm;
    use crate::pki::build::{Issuer, prepare_ocsp_signer};
    use crate::pki::testutil::{SoftSigner, test_ca, tool_available};
    use crate::pki::{new_serial, to_pem};

    /// A CA, a leaf it issued and its delegated responder.
    struct Setup {
        ca: SoftSigner,
        ca_der: Vec<u8>,
        leaf_der: Vec<u8>,
        responder: SoftSigner,
        responder_der: Vec<u8>,
    }

    fn setup() -> Setup {
        let (ca, ca_der) = test_ca(KeyAlgorithm::EcdsaP256);
        let issuer = Issuer::new(&ca, &ca_der).unwrap();
        let now = Utc::now() - Duration::minutes(1);
        let leaf = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        let leaf_der = prepare_ocsp_signer(
            &issuer,
            "leaf.test",
            leaf.public_key_spki(),
            KeyAlgorithm::EcdsaP256,
            &new_serial(),
            now,
            now + Duration::days(2),
        )
        .unwrap()
        .sign(&ca)
        .unwrap();
        let responder = SoftSigner::new(KeyAlgorithm::EcdsaP256);
        let responder_der = prepare_ocsp_signer(
            &issuer,
            "Test OCSP Responder",
            responder.public_key_spki(),
            KeyAlgorithm::EcdsaP256,
            &new_serial(),
            now,
            now + Duration::days(2),
        )
        .unwrap()
        .sign(&ca)
        .unwrap();
        Setup {
            ca,
            ca_der,
            leaf_der,
            responder,
            responder_der,
        }
    }

    fn write(dir: &std::path::Path, name: &str, der: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, to_pem("CERTIFICATE", der)).unwrap();
        path
    }

    fn openssl(args: &[&std::ffi::OsStr]) -> String {
        let out = Command::new("openssl").args(args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn openssl_requests_parse_and_signed_answers_verify() {
        if !tool_available("openssl", &["version"]) {
            return;
        }
        let s = setup();
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.pem", &s.ca_der);
        let leaf = write(dir.path(), "leaf.pem", &s.leaf_der);
        let req = dir.path().join("req.der");
        let resp = dir.path().join("resp.der");
        for (nonce, status) in [
            ("-nonce", CertStatus::Good),
            (
                "-no_nonce",
                CertStatus::Revoked {
                    at: Utc::now() - Duration::hours(1),
                    reason: Some(RevocationReason::KeyCompromise),
                },
            ),
        ] {
            let out = openssl(&[
                "ocsp".as_ref(),
                "-issuer".as_ref(),
                ca.as_os_str(),
                "-cert".as_ref(),
                leaf.as_os_str(),
                nonce.as_ref(),
                "-reqout".as_ref(),
                req.as_os_str(),
            ]);
            let parsed = parse_request(&std::fs::read(&req).unwrap()).expect(&out);
            assert_eq!(parsed.cert_ids.len(), 1);
            assert_eq!(parsed.nonce.is_some(), nonce == "-nonce");
            let id = &parsed.cert_ids[0];
            assert!(IssuerHashes::of(&s.ca_der).unwrap().names(id));
            assert!(!IssuerHashes::of(&s.responder_der).unwrap().names(id));
            let now = Utc::now();
            let der = sign_response(
                &s.responder,
                &s.responder_der,
                now,
                &[SingleResponse {
                    cert_id: id.clone(),
                    status: status.clone(),
                    this_update: now,
                    next_update: now + Duration::hours(1),
                }],
                parsed.nonce.as_deref(),
            )
            .unwrap();
            std::fs::write(&resp, &der).unwrap();
            // With -reqin openssl checks the nonce against the request's.
            let report = openssl(&[
                "ocsp".as_ref(),
                "-reqin".as_ref(),
                req.as_os_str(),
                "-respin".as_ref(),
                resp.as_os_str(),
                "-CAfile".as_ref(),
                ca.as_os_str(),
                "-resp_text".as_ref(),
            ]);
            assert!(report.contains("Response verify OK"), "{report}");
            assert!(
                !report.contains("WARNING") && !report.contains("Nonce Verify error"),
                "{report}"
            );
            match status {
                CertStatus::Good => assert!(report.contains("Cert Status: good"), "{report}"),
                _ => assert!(
                    report.contains("Cert Status: revoked")
                        && report.contains("Revocation Reason: keyCompromise"),
                    "{report}"
                ),
            }
            if tool_available("lint_ocsp_response", &["--help"]) {
                let out = Command::new("lint_ocsp_response")
                    .arg("lint")
                    .arg(&resp)
                    .output()
                    .unwrap();
                let report = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !report.contains("ERROR") && !report.contains("FATAL"),
                    "{report}"
                );
            }
        }
        let _ = &s.ca;
    }

    #[test]
    fn every_hash_algorithm_is_listed() {
        // A new variant fails this match: add it to `ALL` as well.
        let index = |h| match h {
            HashAlgorithm::Sha1 => 0,
            HashAlgorithm::Sha256 => 1,
        };
        let listed: Vec<usize> = HashAlgorithm::ALL.into_iter().map(index).collect();
        assert_eq!(listed, [0, 1]);
    }

    #[test]
    fn encoded_requests_parse_back() {
        let s = setup();
        let serial = [0x41, 0x00, 0x9f];
        for hash in [HashAlgorithm::Sha1, HashAlgorithm::Sha256] {
            for nonce in [None, Some(&[7u8; 16][..])] {
                let der = encode_request(&s.ca_der, &serial, hash, nonce).unwrap();
                let parsed = parse_request(&der).unwrap();
                assert_eq!(parsed.cert_ids.len(), 1);
                let id = &parsed.cert_ids[0];
                assert_eq!(id.serial(), serial);
                assert_eq!(id.hash_algorithm(), hash);
                assert!(IssuerHashes::of(&s.ca_der).unwrap().names(id));
                assert!(!IssuerHashes::of(&s.responder_der).unwrap().names(id));
                assert_eq!(
                    parsed.nonce,
                    nonce.map(der::octet_string),
                    "the nonce is carried as RFC 8954 says"
                );
            }
        }
        // A serial with its high bit set gets its sign byte, and leading
        // zeros of the magnitude are not sent.
        let der =
            encode_request(&s.ca_der, &[0x00, 0x80, 0x01], HashAlgorithm::Sha1, None).unwrap();
        assert_eq!(
            parse_request(&der).unwrap().cert_ids[0].serial(),
            [0x80, 0x01]
        );
        assert!(encode_request(&s.ca_der, &[], HashAlgorithm::Sha1, None).is_err());
        assert!(encode_request(&s.ca_der, &[1; 21], HashAlgorithm::Sha1, None).is_err());
        assert!(encode_request(&s.ca_der, &[1], HashAlgorithm::Sha1, Some(&[0; 33])).is_err());
    }

    #[test]
    fn encoded_requests_are_the_ones_openssl_makes() {
        if !tool_available("openssl", &["version"]) {
            return;
        }
        let s = setup();
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.pem", &s.ca_der);
        let theirs = dir.path().join("theirs.der");
        let serial = new_serial();
        let out = openssl(&[
            "ocsp".as_ref(),
            "-issuer".as_ref(),
            ca.as_os_str(),
            "-serial".as_ref(),
            format!("0x{}", hex::encode(&serial)).as_ref(),
            "-no_nonce".as_ref(),
            "-reqout".as_ref(),
            theirs.as_os_str(),
        ]);
        let ours = encode_request(&s.ca_der, &serial, HashAlgorithm::Sha1, None).unwrap();
        assert_eq!(std::fs::read(&theirs).expect(&out), ours);
        // openssl reads ours back, nonce included.
        let mine = dir.path().join("ours.der");
        let with_nonce =
            encode_request(&s.ca_der, &serial, HashAlgorithm::Sha256, Some(&[3; 16])).unwrap();
        std::fs::write(&mine, &with_nonce).unwrap();
        let text = openssl(&[
            "ocsp".as_ref(),
            "-reqin".as_ref(),
            mine.as_os_str(),
            "-req_text".as_ref(),
        ]);
        assert!(
            text.contains(&format!("Serial Number: {}", hex::encode_upper(&serial))),
            "{text}"
        );
        assert!(text.contains("Hash Algorithm: sha256"), "{text}");
        assert!(text.contains("OCSP Nonce"), "{text}");
        assert!(text.contains(&"03".repeat(16).to_uppercase()), "{text}");
    }

    fn sample_request() -> Vec<u8> {
        let hash = |n: u8| der::octet_string(&[n; 20]);
        let cert_id = der::sequence(&[
            &der::sequence(&[&der::tlv(0x06, OID_SHA1), &der::NULL]),
            &hash(1),
            &hash(2),
            &der::unsigned_integer(&[0x41, 0x42]),
        ]);
        let nonce_ext = der::sequence(&[
            &der::tlv(0x06, OID_NONCE),
            &der::octet_string(&der::octet_string(&[9; 16])),
        ]);
        der::sequence(&[&der::sequence(&[
            &der::sequence(&[&der::sequence(&[&cert_id])]),
            &der::tlv(0xa2, &der::sequence(&[&nonce_ext])),
        ])])
    }

    #[test]
    fn a_hand_built_request_parses() {
        let r = parse_request(&sample_request()).unwrap();
        assert_eq!(r.cert_ids[0].serial(), [0x41, 0x42]);
        assert_eq!(r.cert_ids[0].hash_algorithm(), HashAlgorithm::Sha1);
        assert_eq!(r.nonce.unwrap(), der::octet_string(&[9; 16]));
    }

    #[test]
    fn nothing_panics_and_nothing_damaged_is_accepted_silently() {
        let good = sample_request();
        for cut in 0..good.len() {
            assert!(parse_request(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_request(&trailing).is_err());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut flipped = good.clone();
                flipped[i] ^= 1 << bit;
                let _ = parse_request(&flipped);
            }
        }
        // Pseudo-random garbage, reproducibly.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_request(&bytes);
            let mut prefixed = vec![0x30, bytes.len() as u8];
            prefixed.extend_from_slice(&bytes);
            let _ = parse_request(&prefixed);
        }
    }

    #[test]
    fn limits_are_enforced() {
        let hash = |n: u8| der::octet_string(&[n; 20]);
        let cert_id = der::sequence(&[
            &der::sequence(&[&der::tlv(0x06, OID_SHA1)]),
            &hash(1),
            &hash(2),
            &der::unsigned_integer(&[1]),
        ]);
        let one = der::sequence(&[&cert_id]);
        let many: Vec<u8> = std::iter::repeat_n(one.clone(), MAX_CERT_IDS + 1)
            .flatten()
            .collect();
        let req = der::sequence(&[&der::sequence(&[&der::tlv(0x30, &many)])]);
        assert!(parse_request(&req).is_err());
        let big_nonce = der::sequence(&[
            &der::tlv(0x06, OID_NONCE),
            &der::octet_string(&der::octet_string(&[9; 33])),
        ]);
        let req = der::sequence(&[&der::sequence(&[
            &der::sequence(&[&one]),
            &der::tlv(0xa2, &der::sequence(&[&big_nonce])),
        ])]);
        assert!(parse_request(&req).is_err());
        let negative = der::sequence(&[
            &der::sequence(&[&der::tlv(0x06, OID_SHA1)]),
            &hash(1),
            &hash(2),
            &der::tlv(0x02, &[0xff]),
        ]);
        let req = der::sequence(&[&der::sequence(&[&der::sequence(&[&der::sequence(&[
            &negative,
        ])])])]);
        assert!(parse_request(&req).is_err());
    }

    #[test]
    fn error_responses_are_minimal() {
        assert_eq!(
            error_response(ResponseStatus::MalformedRequest),
            [0x30, 0x03, 0x0a, 0x01, 0x01]
        );
        assert_eq!(
            error_response(ResponseStatus::Unauthorized),
            [0x30, 0x03, 0x0a, 0x01, 0x06]
        );
    }
}
