//! The yardstick of the signing benchmarks: how fast the token itself
//! signs with one key, without clm around it.

use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;

use super::{Hsm, HsmKey, HsmResult};
use crate::domain::KeyAlgorithm;

impl Hsm {
    /// `C_Sign` with `key` in a loop on `threads` threads (one session of
    /// their own each) until `duration` has passed; returns the number of
    /// signatures and the time taken. The input is what issuance hands the
    /// token: a SHA-256 digest for ECDSA (SoftHSM has no hashing ECDSA
    /// mechanism), a 600-byte TBSCertificate-sized message for RSA
    /// (`CKM_SHA256_RSA_PKCS` hashes inside). Blocking.
    pub fn raw_sign_rate_blocking(
        &self,
        key: &HsmKey,
        threads: usize,
        duration: Duration,
    ) -> HsmResult<(u64, Duration)> {
        let started = Instant::now();
        let deadline = started + duration;
        let counts = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    scope.spawn(|| -> HsmResult<u64> {
                        // Per thread: a mechanism is not `Sync`.
                        let (mechanism, input) = sign_input(key.algorithm);
                        let session = self.inner.ctx.open_ro_session(self.inner.slot)?;
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            session.sign(&mechanism, key.handle, &input)?;
                            n += 1;
                        }
                        Ok(n)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(super::HsmError::Pkcs11("signing thread panicked".into()))
                    })
                })
                .collect::<HsmResult<Vec<u64>>>()
        })?;
        Ok((counts.iter().sum(), started.elapsed()))
    }
}

fn sign_input(alg: KeyAlgorithm) -> (Mechanism<'static>, Vec<u8>) {
    match alg {
        KeyAlgorithm::EcdsaP256 => (Mechanism::Ecdsa, vec![0x5a; 32]),
        KeyAlgorithm::EcdsaP384 => (Mechanism::Ecdsa, vec![0x5a; 48]),
        _ => (Mechanism::Sha256RsaPkcs, vec![0x5a; 600]),
    }
}
