//! Identity loading from arbitrary PEM (`crate::identity`, through
//! `Identity::from_pem`, the loader's check without the filesystem; docs/design.md).
//!
//! Input: a `u16` split point, then bytes: the certificate file is what comes before the
//! point, the key file what comes after.
//!
//! Properties, for every pair the loader accepts:
//! - the fingerprint is the SHA-256 of the certificate's DER, and the Remote ID is the one
//!   derived from it (26 characters);
//! - the key is a P-256 key whose public half is the certificate's public key (what str0m
//!   gets as the DTLS identity belongs together);
//! - loading the same bytes again gives the same identity.
//!
//! Anything else must be refused with a reason, never a panic.

use std::sync::OnceLock;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use x509_cert::der::Decode as _;
use x509_cert::Certificate;

use crate::identity::{
    certificate_ec_public_key, remote_id_from_fingerprint, Identity, REMOTE_ID_LEN,
};

pub fn check(data: &[u8]) {
    let split = usize::from(u16::from_be_bytes([
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    ]));
    let rest = data.get(2..).unwrap_or_default();
    let (cert, key) = rest.split_at(split.min(rest.len()));
    let Ok(id) = Identity::from_pem(cert, key) else {
        return;
    };
    let fp = digest::digest(&digest::SHA256, &id.cert_der);
    assert_eq!(
        &id.fingerprint[..],
        fp.as_ref(),
        "fingerprint is not the cert's SHA-256"
    );
    assert_eq!(id.remote_id, remote_id_from_fingerprint(&id.fingerprint));
    assert_eq!(id.remote_id.len(), REMOTE_ID_LEN);
    let dtls = id.dtls_cert();
    assert_eq!(dtls.certificate, id.cert_der);
    let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &dtls.private_key)
        .expect("the accepted key is not P-256 PKCS#8");
    let parsed = Certificate::from_der(&id.cert_der).expect("the accepted cert does not parse");
    assert_eq!(
        certificate_ec_public_key(&parsed),
        Ok(key_pair.public_key().as_ref()),
        "key and certificate do not belong together"
    );
    let again = Identity::from_pem(cert, key).expect("accepted once, refused the second time");
    assert_eq!(again.remote_id, id.remote_id);
}

/// One identity as the gateway stores it (generated once per process).
pub fn stored() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::generate().expect("generate an identity"))
}

fn input(cert: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = (cert.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(cert);
    out.extend_from_slice(key);
    out
}

/// The files as this gateway writes them, as SEC1, swapped, and truncated.
pub fn seeds() -> Vec<Vec<u8>> {
    let id = stored();
    let (cert, key) = (id.cert_pem.as_bytes(), id.key_pem.as_bytes());
    vec![
        input(cert, key),
        input(key, cert),
        input(cert, &key[..key.len() / 2]),
        input(&cert[..cert.len() - 40], key),
        input(
            cert,
            b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIE4kb3kwDMl2lQxJk1JXiUudG2ZaQ0qmc1T8NVTg2+T+oAoGCCqGSM49\nAwEHoUQDQgAE\n-----END EC PRIVATE KEY-----\n",
        ),
    ]
}
