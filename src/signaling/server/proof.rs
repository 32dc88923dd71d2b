//! The ownership-proof extension, server side (docs/protocol.md#ownership-proof): the nonce
//! each new socket is challenged with, and the check of a `register-server` proof.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use data_encoding::BASE64;

use x509_cert::der::Decode as _;
use x509_cert::Certificate;

use crate::identity::{certificate_ec_public_key, remote_id_of_certificate};
use crate::signaling::protocol::{proof_message, Proof};

/// Random bytes in a nonce (the protocol asks for at least 16).
const NONCE_BYTES: usize = 18;
/// Longest base64 certificate accepted (ours are about 500 bytes of DER).
const MAX_CERTIFICATE_B64: usize = 8 * 1024;
/// Longest base64 signature accepted (a P-256 DER signature is at most 72 bytes).
const MAX_SIGNATURE_B64: usize = 256;

/// A fresh nonce, base64 (`None` only if the system has no randomness).
pub fn new_nonce() -> Option<String> {
    let mut bytes = [0u8; NONCE_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(BASE64.encode(&bytes))
}

/// Whether `proof` shows that its sender holds the key of a certificate whose Remote ID is
/// `remote_id`, signed over this socket's `nonce`; `Err` says why not (for the log).
pub fn verify(proof: &Proof, nonce: &str, remote_id: &str) -> Result<(), &'static str> {
    let cert_b64 = proof
        .certificate
        .as_deref()
        .filter(|c| c.len() <= MAX_CERTIFICATE_B64)
        .ok_or("no certificate, or one too long")?;
    let sig_b64 = proof
        .signature
        .as_deref()
        .filter(|s| s.len() <= MAX_SIGNATURE_B64)
        .ok_or("no signature, or one too long")?;
    let cert_der = BASE64
        .decode(cert_b64.as_bytes())
        .map_err(|_| "the certificate is not base64")?;
    let signature = BASE64
        .decode(sig_b64.as_bytes())
        .map_err(|_| "the signature is not base64")?;
    if !remote_id_of_certificate(&cert_der).eq_ignore_ascii_case(remote_id) {
        return Err("the certificate is not that of this Remote ID");
    }
    let cert = Certificate::from_der(&cert_der).map_err(|_| "the certificate is not X.509")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, certificate_ec_public_key(&cert)?)
        .verify(&proof_message(nonce, remote_id), &signature)
        .map_err(|_| "the signature does not verify")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_proof_verifies_only_for_its_nonce_and_remote_id() {
        let identity = Identity::generate().unwrap();
        let prover = identity.prover().unwrap();
        let id = identity.remote_id.as_str();
        let nonce = new_nonce().unwrap();
        assert!(BASE64.decode(nonce.as_bytes()).unwrap().len() >= 16);
        assert_ne!(nonce, new_nonce().unwrap());
        let proof = prover.prove(&nonce, id).unwrap();
        assert_eq!(verify(&proof, &nonce, id), Ok(()));
        // The ID as sent is signed; the certificate's ID is compared without case.
        assert!(verify(&proof, &nonce, &id.to_lowercase()).is_err());
        let lower = prover.prove(&nonce, &id.to_lowercase()).unwrap();
        assert_eq!(verify(&lower, &nonce, &id.to_lowercase()), Ok(()));
        // Another nonce (a replayed proof), another ID, another key.
        assert!(verify(&proof, &new_nonce().unwrap(), id).is_err());
        let other = Identity::generate().unwrap();
        assert!(verify(&proof, &nonce, &other.remote_id).is_err());
        let theirs = other.prover().unwrap().prove(&nonce, id).unwrap();
        assert!(
            verify(&theirs, &nonce, id).is_err(),
            "signed by a key not of this ID"
        );
        // A proof that pairs our certificate with another key's signature.
        let forged = Proof {
            certificate: proof.certificate.clone(),
            signature: theirs.signature.clone(),
        };
        assert_eq!(
            verify(&forged, &nonce, id),
            Err("the signature does not verify")
        );
        // Garbage of every kind is refused, never a panic.
        for bad in [
            Proof {
                certificate: None,
                signature: proof.signature.clone(),
            },
            Proof {
                certificate: proof.certificate.clone(),
                signature: None,
            },
            Proof {
                certificate: Some("!!".into()),
                signature: proof.signature.clone(),
            },
            Proof {
                certificate: Some("A".repeat(MAX_CERTIFICATE_B64 + 4)),
                signature: proof.signature.clone(),
            },
            Proof {
                certificate: Some(BASE64.encode(b"not a certificate")),
                signature: proof.signature.clone(),
            },
            Proof {
                certificate: proof.certificate.clone(),
                signature: Some(BASE64.encode(&[0u8; 70])),
            },
        ] {
            assert!(verify(&bad, &nonce, id).is_err(), "{bad:?}");
        }
    }
}
