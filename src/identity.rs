//! The gateway's DTLS identity: certificate, Remote ID and the clients' pin check
//! (docs/protocol.md#identity-and-remote-id).
//!
//! - The certificate is ECDSA P-256, self-signed, CN `Music Assistant WebRTC`, signed with
//!   ecdsa-with-SHA256, valid from now − 1 day for 3650 days. It is stored as PEM in the data
//!   folder under Music Assistant's own file names ([`CERT_FILE`], [`KEY_FILE`], the key as
//!   unencrypted PKCS#8 with mode 0600), so a gateway pointed at MA's data folder keeps the
//!   Remote ID its users already have.
//! - [`Identity::load_or_create`] regenerates it when a file is missing or unreadable, the key
//!   is not EC P-256, key and certificate do not match, or fewer than 30 days of validity remain.
//!   Writes are atomic (temporary file, fsync, rename), key first: a crash between the two
//!   renames leaves a new key next to the old certificate, which the next start detects as a
//!   mismatch and regenerates.
//! - The Remote ID is base32 (RFC 4648, upper-case, no padding) of the first 16 bytes of the
//!   certificate's SHA-256 fingerprint with every `2` replaced by `9`: 26 characters.
//! - Clients pin it: [`verify_answer_fingerprint`] does what the web app does with our SDP
//!   answer. The answer must therefore carry exactly this certificate's fingerprint, which is
//!   what [`Identity::dtls_cert`] hands to str0m.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use data_encoding::{BASE32_NOPAD, BASE64, HEXUPPER};
use log::{info, warn};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode as _;
use x509_cert::Certificate;

/// File name of the PEM certificate in the data folder (Music Assistant's name).
pub const CERT_FILE: &str = "webrtc_certificate.pem";
/// File name of the PEM (PKCS#8) private key in the data folder (Music Assistant's name).
pub const KEY_FILE: &str = "webrtc_private_key.pem";
/// Subject and issuer common name of the certificate.
pub const COMMON_NAME: &str = "Music Assistant WebRTC";
/// Validity of a new certificate, counted from now.
pub const VALIDITY_DAYS: i64 = 3650;
/// A certificate with less validity left than this is replaced.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// Length of a Remote ID: 128 bits in base32.
pub const REMOTE_ID_LEN: usize = 26;
/// The web app; [`app_link`] appends the Remote ID.
pub const APP_URL: &str = "https://app.music-assistant.io/?remote_id=";

const DAY_SECS: i64 = 86_400;
/// id-ecPublicKey (RFC 5480), the algorithm of an EC public key in a certificate.
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// Held (an exclusive advisory lock) by the gateway running on a data folder.
pub const LOCK_FILE: &str = "ma-webrtc-gateway.lock";

/// The certificate and key the gateway presents in DTLS, and the Remote ID derived from them.
///
/// Only [`Identity::generate`] and [`Identity::load_or_create`] build one, so the key always
/// is a valid EC P-256 key that matches the certificate.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, PEM (as stored).
    pub cert_pem: String,
    /// The private key, PEM (as stored; PKCS#8 when this gateway wrote it).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// SHA-256 of `cert_der`: the `a=fingerprint:sha-256` of our SDP answers.
    pub fingerprint: [u8; 32],
    /// The Remote ID, 26 characters (see [`remote_id_from_fingerprint`]).
    pub remote_id: String,
    /// The private key, PKCS#8 DER (what str0m wants).
    key_der: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("remote_id", &self.remote_id)
            .field("fingerprint", &self.fingerprint_colon_hex())
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How [`Identity::load_or_create`] got its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The stored certificate and key were valid and are used unchanged.
    Existing,
    /// A new certificate was generated and stored: the Remote ID is new. `reason` says why
    /// (also logged, at warn level unless this was the first start).
    Created {
        /// Why the stored identity was not usable (human-readable).
        reason: String,
    },
}

/// An error that makes it impossible to have an identity at all (the folder cannot be created
/// or written, generation failed), or that forbids replacing the stored one: a file that
/// exists but cannot be read (permissions, I/O error) might hold a perfectly good identity,
/// and regenerating it would change the Remote ID for good. Only a missing file or content
/// that is provably unusable causes a regeneration, see [`Loaded::Created`].
#[derive(Debug)]
pub enum IdentityError {
    /// A filesystem operation failed.
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Generating or encoding the certificate failed.
    Crypto(String),
    /// Another gateway holds the data folder's lock file.
    Locked { path: PathBuf, holder: String },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            IdentityError::Crypto(msg) => write!(f, "DTLS certificate: {msg}"),
            IdentityError::Locked { path, holder } => write!(
                f,
                "another ma-webrtc-gateway{holder} is running on this data folder ({} is \
                 locked); stop it first, or give this one its own MA_DATA_DIR",
                path.display()
            ),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            IdentityError::Crypto(_) | IdentityError::Locked { .. } => None,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io {
        action,
        path,
        source,
    }
}

fn crypto_error<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> IdentityError {
    move |e| IdentityError::Crypto(format!("{what}: {e}"))
}

/// Why the stored identity cannot be used.
struct Unusable {
    /// Neither file exists: a first start, not a change of Remote ID.
    first_start: bool,
    reason: String,
}

impl Unusable {
    fn new(reason: String) -> Self {
        Unusable {
            first_start: false,
            reason,
        }
    }
}

impl Identity {
    /// Loads the identity stored in `dir`, or generates and stores a new one when there is none
    /// or the stored one is unusable (see the module documentation for the rules).
    ///
    /// A regeneration changes the Remote ID: it is logged at warn level with the reason and the
    /// new ID (info level on a first start), and the reason is returned in [`Loaded::Created`].
    /// An existing key file readable by group or others is tightened to 0600.
    ///
    /// Errors when no identity can be had (`dir` cannot be created or written, generation
    /// failed) and when a stored file exists but cannot be read. The message names the path.
    pub fn load_or_create(dir: &Path) -> Result<(Identity, Loaded), IdentityError> {
        match Self::load(dir)? {
            Ok(identity) => {
                tighten_key_mode(&dir.join(KEY_FILE));
                Ok((identity, Loaded::Existing))
            }
            Err(unusable) => {
                let identity = Self::generate()?;
                identity.store(dir)?;
                if unusable.first_start {
                    info!(
                        "created the WebRTC DTLS certificate in {}: Remote ID {}",
                        dir.display(),
                        display_remote_id(&identity.remote_id)
                    );
                } else {
                    warn!(
                        "the WebRTC DTLS certificate in {} was replaced ({}): the Remote ID \
                         changed to {}; clients must use the new ID or link {}",
                        dir.display(),
                        unusable.reason,
                        display_remote_id(&identity.remote_id),
                        app_link(&identity.remote_id)
                    );
                }
                Ok((
                    identity,
                    Loaded::Created {
                        reason: unusable.reason,
                    },
                ))
            }
        }
    }

    /// The stored identity, read only: never created or replaced (`doctor`). `Err` says why
    /// it cannot be used as it is (missing, unreadable, mismatched, expiring).
    pub fn load_existing(dir: &Path) -> Result<Identity, String> {
        match Self::load(dir) {
            Ok(Ok(identity)) => Ok(identity),
            Ok(Err(unusable)) if unusable.first_start => Err(format!(
                "no identity in {} yet (the gateway creates one at its first start)",
                dir.display()
            )),
            Ok(Err(unusable)) => Err(unusable.reason),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whole days of validity the certificate has left (negative once expired).
    pub fn days_left(&self) -> i64 {
        let left = Certificate::from_der(&self.cert_der)
            .map(|cert| not_after_unix(&cert) - now_unix())
            .unwrap_or(0);
        left.div_euclid(DAY_SECS)
    }

    /// Generates a new identity (not stored): ECDSA P-256 key, self-signed certificate with
    /// CN `Music Assistant WebRTC`, ecdsa-with-SHA256, random 128-bit serial, valid from
    /// now − 1 day for [`VALIDITY_DAYS`] days.
    pub fn generate() -> Result<Identity, IdentityError> {
        let now = now_unix();
        Self::generate_with_validity(now - DAY_SECS, now + VALIDITY_DAYS * DAY_SECS)
    }

    /// Generates with an explicit validity (Unix seconds); used by [`Identity::generate`] and
    /// tests.
    fn generate_with_validity(not_before: i64, not_after: i64) -> Result<Identity, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(crypto_error("key generation failed"))?;
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, COMMON_NAME);
        params.distinguished_name = name;
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before)
            .map_err(crypto_error("bad notBefore"))?;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)
            .map_err(crypto_error("bad notAfter"))?;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(crypto_error("no randomness"))?;
        serial[0] = (serial[0] & 0x7f) | 0x01; // positive, and 16 significant bytes
        params.serial_number = Some(serial.to_vec().into());
        let cert = params
            .self_signed(&key)
            .map_err(crypto_error("signing failed"))?;
        let key_der = key.serialize_der();
        Ok(Self::from_parts(
            cert.pem(),
            key.serialize_pem(),
            cert.der().to_vec(),
            key_der,
        ))
    }

    fn from_parts(cert_pem: String, key_pem: String, cert_der: Vec<u8>, key_der: Vec<u8>) -> Self {
        let fingerprint = sha256(&cert_der);
        Identity {
            remote_id: remote_id_from_fingerprint(&fingerprint),
            cert_pem,
            key_pem,
            cert_der,
            fingerprint,
            key_der,
        }
    }

    /// Reads the stored files: `Err` when one exists but cannot be read; `Ok(Err(..))` when
    /// they are missing or unusable (regenerate); `Ok(Ok(..))` when they are good.
    fn load(dir: &Path) -> Result<Result<Identity, Unusable>, IdentityError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let read = |path: &Path| match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", path)(e)),
        };
        let (cert_file, key_file) = (read(&cert_path)?, read(&key_path)?);
        Ok(Self::check(dir, cert_file, key_file))
    }

    /// The identity the two stored files would give, from their bytes (the loader's own
    /// check, with no filesystem): `Err` with the reason it is unusable. For the fuzz target
    /// and the property tests.
    #[cfg(any(test, feature = "testkit"))]
    pub fn from_pem(cert_file: &[u8], key_file: &[u8]) -> Result<Identity, String> {
        Self::check(
            Path::new("(memory)"),
            Some(cert_file.to_vec()),
            Some(key_file.to_vec()),
        )
        .map_err(|u| u.reason)
    }

    /// Checks the stored files' contents (`None`: the file does not exist).
    fn check(
        dir: &Path,
        cert_file: Option<Vec<u8>>,
        key_file: Option<Vec<u8>>,
    ) -> Result<Identity, Unusable> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let (cert_file, key_file) = match (cert_file, key_file) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                return Err(Unusable {
                    first_start: true,
                    reason: format!("no certificate in {} yet", dir.display()),
                })
            }
            (None, Some(_)) => {
                return Err(Unusable::new(format!("{} is missing", cert_path.display())))
            }
            (Some(_), None) => {
                return Err(Unusable::new(format!("{} is missing", key_path.display())))
            }
        };

        let cert_pem_block = parse_pem(&cert_file, &cert_path)?;
        if cert_pem_block.label != "CERTIFICATE" {
            return Err(Unusable::new(format!(
                "{} holds a {}, not a CERTIFICATE",
                cert_path.display(),
                cert_pem_block.label
            )));
        }
        let cert_der = cert_pem_block.contents;
        let cert = Certificate::from_der(&cert_der).map_err(|e| {
            Unusable::new(format!(
                "{} is not a valid X.509 certificate: {e}",
                cert_path.display()
            ))
        })?;

        let key_pem_block = parse_pem(&key_file, &key_path)?;
        let key_pair = parse_p256_key(&key_pem_block)
            .map_err(|why| Unusable::new(format!("private key {}: {why}", key_path.display())))?;
        let key_der = key_pair
            .to_pkcs8v1()
            .map_err(|_| {
                Unusable::new(format!(
                    "private key {}: cannot be re-encoded as PKCS#8",
                    key_path.display()
                ))
            })?
            .as_ref()
            .to_vec();

        if certificate_ec_public_key(&cert) != Ok(key_pair.public_key().as_ref()) {
            return Err(Unusable::new(format!(
                "{} and {} do not belong together (interrupted write?)",
                key_path.display(),
                cert_path.display()
            )));
        }

        let not_after = cert.tbs_certificate().validity().not_after;
        let left =
            i64::try_from(not_after.to_unix_duration().as_secs()).unwrap_or(i64::MAX) - now_unix();
        if left < RENEW_BEFORE_DAYS * DAY_SECS {
            return Err(Unusable::new(if left <= 0 {
                format!(
                    "the certificate expired {} days ago",
                    left.unsigned_abs() / DAY_SECS as u64
                )
            } else {
                format!(
                    "the certificate expires in {} days (renewed when under {RENEW_BEFORE_DAYS})",
                    left / DAY_SECS
                )
            }));
        }

        let cert_pem = String::from_utf8_lossy(&cert_file).into_owned();
        let key_pem = String::from_utf8_lossy(&key_file).into_owned();
        Ok(Self::from_parts(cert_pem, key_pem, cert_der, key_der))
    }

    /// Stores key then certificate in `dir` (created with mode 0700 if missing), each written
    /// atomically: temporary file in `dir`, fsync, rename, fsync of `dir`.
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        create_dir(dir)?;
        write_atomic(&dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        if let Ok(d) = fs::File::open(dir) {
            // Makes the renames durable; not supported everywhere, hence best effort.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The SHA-256 fingerprint as in SDP: upper-case hex pairs joined by `:`.
    pub fn fingerprint_colon_hex(&self) -> String {
        colon_hex(&self.fingerprint)
    }

    /// The signer of ownership proofs for this identity's Remote ID.
    pub fn prover(&self) -> Result<Prover, IdentityError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.key_der)
            .map_err(crypto_error("the key cannot sign"))?;
        Ok(Prover {
            cert_der: self.cert_der.clone().into(),
            key: std::sync::Arc::new(key),
            remote_id: self.remote_id.clone(),
        })
    }

    /// The certificate for str0m: `RtcConfig::new().set_dtls_cert(identity.dtls_cert())`.
    ///
    /// str0m then presents exactly this certificate in DTLS and puts its SHA-256 fingerprint
    /// (equal to [`Identity::fingerprint`]) in every SDP answer.
    pub fn dtls_cert(&self) -> str0m::config::DtlsCert {
        str0m::config::DtlsCert {
            certificate: self.cert_der.clone(),
            private_key: self.key_der.clone(),
        }
    }
}

fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
        Err(_) => 0,
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&HEXUPPER.encode(&[*b]));
    }
    out
}

fn parse_pem(data: &[u8], path: &Path) -> Result<Pem, Unusable> {
    pem_block(data).map_err(|e| Unusable::new(format!("{} is not valid PEM: {e}", path.display())))
}

/// One PEM block (RFC 7468): its label and its decoded contents.
#[derive(Debug, PartialEq, Eq)]
struct Pem {
    label: String,
    contents: Vec<u8>,
}

/// The first PEM block of `data`: text before it is ignored (explanatory text is allowed
/// before the encapsulation boundary), the label of `END` must match the one of `BEGIN`, and
/// the base64 between them may be wrapped at any width.
fn pem_block(data: &[u8]) -> Result<Pem, String> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----";
    let text = std::str::from_utf8(data).map_err(|_| "not text".to_string())?;
    let start = text.find(BEGIN).ok_or("no -----BEGIN line")? + BEGIN.len();
    let rest = &text[start..];
    let label_end = rest.find(DASHES).ok_or("unterminated BEGIN line")?;
    let label = &rest[..label_end];
    if label.contains(['\r', '\n']) {
        return Err("unterminated BEGIN line".into());
    }
    let body = &rest[label_end + DASHES.len()..];
    let end = body
        .find(END)
        .ok_or_else(|| format!("no END line for {label}"))?;
    if !body[end + END.len()..].starts_with(&format!("{label}{DASHES}")) {
        return Err(format!("the END line does not match BEGIN {label}"));
    }
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let contents = BASE64
        .decode(b64.as_bytes())
        .map_err(|e| format!("bad base64 in {label}: {e}"))?;
    Ok(Pem {
        label: label.to_string(),
        contents,
    })
}

/// The end of a certificate's validity, in Unix seconds.
fn not_after_unix(cert: &Certificate) -> i64 {
    let not_after = cert.tbs_certificate().validity().not_after;
    i64::try_from(not_after.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// The EC public key (uncompressed point) of a DER certificate, or why there is none.
pub fn certificate_ec_public_key(cert: &Certificate) -> Result<&[u8], &'static str> {
    let spki = cert.tbs_certificate().subject_public_key_info();
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
        return Err("the certificate's key is not an EC key");
    }
    spki.subject_public_key
        .as_bytes()
        .ok_or("the certificate's key is not a whole number of bytes")
}

/// Accepts PKCS#8 (`PRIVATE KEY`, what MA and we write) and SEC1 (`EC PRIVATE KEY`) P-256 keys.
fn parse_p256_key(pem: &Pem) -> Result<EcdsaKeyPair, String> {
    let alg = &ECDSA_P256_SHA256_ASN1_SIGNING;
    match pem.label.as_str() {
        "PRIVATE KEY" => {
            EcdsaKeyPair::from_pkcs8(alg, &pem.contents).map_err(
                |e| match rcgen::KeyPair::try_from(pem.contents.as_slice()) {
                    Ok(other) => format!("not an EC P-256 key ({:?})", other.algorithm()),
                    Err(_) => format!("not a usable EC P-256 PKCS#8 key ({e})"),
                },
            )
        }
        "EC PRIVATE KEY" => EcdsaKeyPair::from_private_key_der(alg, &pem.contents)
            .map_err(|e| format!("not a usable EC P-256 key ({e})")),
        "ENCRYPTED PRIVATE KEY" => Err("encrypted keys are not supported".to_string()),
        other => Err(format!("a {other} is not an EC P-256 key")),
    }
}

/// The data folder, locked for this process: a second gateway on the same folder would
/// register the same Remote ID and the two would evict each other from the signaling server.
/// Released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

/// Lock `dir` (created if missing) for this process, or say who holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, IdentityError> {
    create_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io_error("open", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = io::Read::read_to_string(&mut file, &mut holder);
            let holder = holder.trim();
            let who = match holder.parse::<u32>() {
                Ok(pid) => format!(" (process {pid})"),
                Err(_) => String::new(),
            };
            return Err(IdentityError::Locked { path, holder: who });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &path)(e)),
    }
    // For the message a second instance prints; the lock itself is what counts.
    let _ = file.set_len(0);
    let _ = io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes());
    Ok(DataDirLock { _file: file })
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error("create folder", dir))
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    // A leftover from a crash would keep its old mode: start from scratch.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp).map_err(io_error("create", &tmp))?;
        file.write_all(data).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("fsync", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_error("replace", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Older MA versions wrote the key under the umask first: repair a key readable by others.
fn tighten_key_mode(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Opened without following a symlink, and changed through that handle: a link planted
        // in the data folder cannot make us change the mode of another file.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        let Ok(file) = file else {
            if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                warn!(
                    "{} is a symbolic link: its mode is left alone",
                    path.display()
                );
            }
            return;
        };
        let Ok(meta) = file.metadata() else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            match file.set_permissions(fs::Permissions::from_mode(0o600)) {
                Ok(()) => warn!(
                    "{} was readable by others (mode {mode:o}): set to 0600",
                    path.display()
                ),
                Err(e) => warn!(
                    "{} is readable by others (mode {mode:o}) and cannot be fixed: {e}",
                    path.display()
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The Remote ID of a certificate (DER): [`remote_id_from_fingerprint`] of its SHA-256.
pub fn remote_id_of_certificate(cert_der: &[u8]) -> String {
    remote_id_from_fingerprint(&sha256(cert_der))
}

/// Signs ownership proofs for the signaling server (docs/protocol.md#ownership-proof) with the
/// identity's key. Cheap to clone; its `Debug` shows no key.
#[derive(Clone)]
pub struct Prover {
    cert_der: std::sync::Arc<[u8]>,
    key: std::sync::Arc<EcdsaKeyPair>,
    remote_id: String,
}

impl fmt::Debug for Prover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prover")
            .field("remote_id", &self.remote_id)
            .finish_non_exhaustive()
    }
}

impl Prover {
    /// The Remote ID this prover can prove (the certificate's).
    pub fn remote_id(&self) -> &str {
        &self.remote_id
    }

    /// The `proof` of `register-server` for `remote_id` against the server's `nonce`: the
    /// certificate and an ECDSA P-256 / SHA-256 signature over
    /// [`crate::signaling::protocol::proof_message`], both base64.
    pub fn prove(
        &self,
        nonce: &str,
        remote_id: &str,
    ) -> Result<crate::signaling::protocol::Proof, IdentityError> {
        let message = crate::signaling::protocol::proof_message(nonce, remote_id);
        let signature = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), &message)
            .map_err(crypto_error("signing the proof failed"))?;
        Ok(crate::signaling::protocol::Proof {
            certificate: Some(BASE64.encode(&self.cert_der)),
            signature: Some(BASE64.encode(signature.as_ref())),
        })
    }
}

/// The Remote ID of a certificate fingerprint: base32 (RFC 4648, upper-case, no padding) of
/// its first 16 bytes, every `2` replaced by `9`. Always 26 characters.
pub fn remote_id_from_fingerprint(fp: &[u8; 32]) -> String {
    BASE32_NOPAD.encode(&fp[..16]).replace('2', "9")
}

/// The Remote ID for people: groups of 8-5-5-8 characters joined by `-`. Anything that is not
/// a 26-character ID (a legacy `MA-XXXX-XXXX` override) is returned unchanged.
pub fn display_remote_id(id: &str) -> String {
    if id.len() != REMOTE_ID_LEN || !id.is_ascii() {
        return id.to_string();
    }
    format!("{}-{}-{}-{}", &id[..8], &id[8..13], &id[13..18], &id[18..])
}

/// The web app link that connects to this gateway.
pub fn app_link(id: &str) -> String {
    format!("{APP_URL}{id}")
}

/// Why a client refuses an SDP answer ([`verify_answer_fingerprint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinError {
    /// The Remote ID does not decode to 16 bytes (e.g. a legacy `MA-XXXX-XXXX` ID).
    InvalidRemoteId {
        /// The ID as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The answer has no `a=fingerprint:sha-256` line.
    NoSha256Fingerprint,
    /// A sha-256 fingerprint is not colon-separated hex of at least 16 bytes.
    MalformedFingerprint(String),
    /// A sha-256 fingerprint does not start with the 16 bytes of the Remote ID.
    Mismatch {
        /// The 16 bytes the Remote ID stands for, colon hex.
        expected_prefix: String,
        /// The fingerprint found in the answer.
        found: String,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::InvalidRemoteId { id, reason } => write!(
                f,
                "invalid Remote ID {id:?}: {reason} (only 26-character certificate-based IDs \
                 can be pinned)"
            ),
            PinError::NoSha256Fingerprint => {
                write!(f, "no SHA-256 fingerprint found in the SDP answer")
            }
            PinError::MalformedFingerprint(v) => {
                write!(f, "malformed SHA-256 fingerprint in the SDP answer: {v:?}")
            }
            PinError::Mismatch {
                expected_prefix,
                found,
            } => write!(
                f,
                "server certificate does not match the Remote ID: fingerprint {found} does not \
                 start with {expected_prefix}"
            ),
        }
    }
}

impl std::error::Error for PinError {}

/// The 16 fingerprint bytes a Remote ID stands for: `9` mapped back to `2`, then base32
/// (no padding). Surrounding whitespace is ignored and lower case accepted; anything else that
/// is not canonical base32 of exactly 16 bytes (legacy `MA-XXXX-XXXX` IDs, for one) is an error.
pub fn remote_id_prefix(remote_id: &str) -> Result<[u8; 16], PinError> {
    let invalid = |reason: String| PinError::InvalidRemoteId {
        id: remote_id.to_string(),
        reason,
    };
    let text = remote_id.trim().to_ascii_uppercase().replace('9', "2");
    let bytes = BASE32_NOPAD
        .decode(text.as_bytes())
        .map_err(|e| invalid(format!("not base32 ({e})")))?;
    <[u8; 16]>::try_from(bytes.as_slice())
        .map_err(|_| invalid(format!("decodes to {} bytes instead of 16", bytes.len())))
}

/// The client-side pin check the web app applies to our SDP answer before using it: decode the
/// Remote ID ([`remote_id_prefix`]), ignore `a=fingerprint` lines whose hash is not sha-256
/// (compared case-insensitively), require at least one sha-256 line, and require every sha-256
/// fingerprint to start with the Remote ID's 16 bytes. Clients never retry after a failure.
pub fn verify_answer_fingerprint(sdp: &str, remote_id: &str) -> Result<(), PinError> {
    let expected = remote_id_prefix(remote_id)?;
    let mut seen = 0usize;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        let Some(head) = line.get(..14) else {
            continue;
        };
        if !head.eq_ignore_ascii_case("a=fingerprint:") {
            continue;
        }
        let rest = &line[14..];
        let mut parts = rest.split_ascii_whitespace();
        let hash = parts.next().unwrap_or("");
        if !hash.eq_ignore_ascii_case("sha-256") {
            continue;
        }
        seen += 1;
        let value = parts.next().unwrap_or("");
        let bytes = parse_colon_hex(value)
            .filter(|b| b.len() >= 16)
            .ok_or_else(|| PinError::MalformedFingerprint(value.to_string()))?;
        if bytes[..16] != expected {
            return Err(PinError::Mismatch {
                expected_prefix: colon_hex(&expected),
                found: colon_hex(&bytes),
            });
        }
    }
    if seen == 0 {
        return Err(PinError::NoSha256Fingerprint);
    }
    Ok(())
}

fn parse_colon_hex(value: &str) -> Option<Vec<u8>> {
    value
        .split(':')
        .map(|pair| {
            if pair.len() == 2 && pair.bytes().all(|c| c.is_ascii_hexdigit()) {
                u8::from_str_radix(pair, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const VECTOR_FP: &str = "80:9E:94:CD:2C:46:D0:30:B6:91:A7:AE:94:91:B1:C5:\
                             68:FB:A4:E8:8D:72:A7:68:D4:49:61:5D:38:69:66:F8";
    const VECTOR_ID: &str = "QCPJJTJMI3IDBNURU6XJJENRYU";

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "ma-identity-test-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn vector_fp() -> [u8; 32] {
        let bytes = parse_colon_hex(VECTOR_FP).expect("vector parses");
        <[u8; 32]>::try_from(bytes.as_slice()).expect("32 bytes")
    }

    fn created_reason(loaded: Loaded) -> String {
        match loaded {
            Loaded::Created { reason } => reason,
            Loaded::Existing => panic!("expected a regeneration"),
        }
    }

    /// Stores a first identity, lets `damage` alter the folder, reloads and returns the reason.
    fn regenerate_after(tag: &str, damage: impl FnOnce(&Path)) -> (String, String, String) {
        let dir = TempDir::new(tag);
        let (first, _) = Identity::load_or_create(&dir.0).expect("create");
        damage(&dir.0);
        let (second, loaded) = Identity::load_or_create(&dir.0).expect("regenerate");
        assert_ne!(first.remote_id, second.remote_id);
        // What was written loads back unchanged.
        let (third, again) = Identity::load_or_create(&dir.0).expect("reload");
        assert_eq!(again, Loaded::Existing);
        assert_eq!(third.remote_id, second.remote_id);
        (created_reason(loaded), first.remote_id, second.remote_id)
    }

    fn self_signed_pem(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = if alg == &rcgen::PKCS_RSA_SHA256 {
            rcgen::KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).expect("rsa key")
        } else {
            rcgen::KeyPair::generate_for(alg).expect("key")
        };
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn remote_id_vector() {
        let fp = vector_fp();
        assert_eq!(remote_id_from_fingerprint(&fp), VECTOR_ID);
        assert_eq!(remote_id_prefix(VECTOR_ID).expect("decodes"), fp[..16]);
        assert_eq!(
            remote_id_prefix(" qcpjjtjmi3idbnuru6xjjenryu ").expect("lenient"),
            fp[..16]
        );
    }

    #[test]
    fn nines_map_back_to_twos() {
        // 0xD6 0xB5 ... encodes with '2's; make sure the 2->9 mapping round trips.
        let mut fp = [0u8; 32];
        fp[..16].copy_from_slice(&[0xd6; 16]);
        let id = remote_id_from_fingerprint(&fp);
        assert!(BASE32_NOPAD.encode(&fp[..16]).contains('2'));
        assert!(!id.contains('2') && id.contains('9'));
        assert_eq!(remote_id_prefix(&id).expect("decodes"), fp[..16]);
    }

    #[test]
    fn display_and_link() {
        assert_eq!(
            display_remote_id(VECTOR_ID),
            "QCPJJTJM-I3IDB-NURU6-XJJENRYU"
        );
        assert_eq!(display_remote_id("MA-ABCD-EFGH"), "MA-ABCD-EFGH");
        assert_eq!(
            app_link(VECTOR_ID),
            "https://app.music-assistant.io/?remote_id=QCPJJTJMI3IDBNURU6XJJENRYU"
        );
    }

    #[test]
    fn pem_blocks_are_read_with_their_label_and_any_wrapping() {
        let der: Vec<u8> = (0..=255u8).collect();
        let b64 = BASE64.encode(&der);
        let wrapped = |width: usize| {
            b64.as_bytes()
                .chunks(width)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\r\n")
        };
        for width in [64, 76, 1000] {
            let text = format!(
                "explanatory text\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                wrapped(width)
            );
            let pem = pem_block(text.as_bytes()).unwrap();
            assert_eq!(
                (pem.label.as_str(), pem.contents),
                ("CERTIFICATE", der.clone())
            );
        }
        let bad = [
            ("", "no -----BEGIN"),
            ("-----BEGIN X-----\nAAAA\n", "no END line for X"),
            (
                "-----BEGIN X-----\nAAAA\n-----END Y-----\n",
                "does not match",
            ),
            ("-----BEGIN X-----\nA?AA\n-----END X-----\n", "bad base64"),
            ("-----BEGIN X\n-----\n", "unterminated"),
            ("-----BEGIN ", "unterminated"),
        ];
        for (text, why) in bad {
            let e = pem_block(text.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(pem_block(&[0xff, 0xfe]).unwrap_err().contains("not text"));
    }

    #[test]
    fn generated_certificate_matches_spec() {
        let id = Identity::generate().expect("generate");
        assert_eq!(id.remote_id.len(), REMOTE_ID_LEN);
        assert_eq!(id.fingerprint, sha256(&id.cert_der));
        assert_eq!(id.fingerprint_colon_hex().len(), 32 * 3 - 1);
        let cert = Certificate::from_der(&id.cert_der).expect("parses");
        let tbs = cert.tbs_certificate();
        assert_eq!(tbs.subject().to_string(), "CN=Music Assistant WebRTC");
        assert_eq!(tbs.issuer().to_string(), "CN=Music Assistant WebRTC");
        assert_eq!(
            cert.signature_algorithm().oid,
            ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"), // ecdsa-with-SHA256
        );
        assert_eq!(
            tbs.subject_public_key_info().algorithm.oid,
            OID_EC_PUBLIC_KEY
        );
        let now = now_unix();
        let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
        let nb = secs(tbs.validity().not_before);
        let na = secs(tbs.validity().not_after);
        assert!((nb - (now - DAY_SECS)).abs() < 60);
        assert!((na - (now + VALIDITY_DAYS * DAY_SECS)).abs() < 60);
        assert!(id.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }

    #[test]
    fn fresh_folder_then_existing() {
        let dir = TempDir::new("fresh");
        let data = dir.0.join("nested").join("data");
        let (first, loaded) = Identity::load_or_create(&data).expect("create");
        assert!(matches!(loaded, Loaded::Created { .. }));
        assert!(data.join(CERT_FILE).is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&data.join(KEY_FILE)), 0o600);
            assert_eq!(mode(&data), 0o700);
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&data)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let (second, loaded) = Identity::load_or_create(&data).expect("load");
        assert_eq!(loaded, Loaded::Existing);
        assert_eq!(second.remote_id, first.remote_id);
        assert_eq!(second.cert_der, first.cert_der);
        assert_eq!(second.key_der, first.key_der);
    }

    #[cfg(unix)]
    #[test]
    fn loose_key_mode_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let (first, _) = Identity::load_or_create(&dir.0).expect("create");
        let key = dir.0.join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let (second, loaded) = Identity::load_or_create(&dir.0).expect("load");
        assert_eq!(loaded, Loaded::Existing);
        assert_eq!(first.remote_id, second.remote_id);
        let mode = fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_certificate_regenerates() {
        let (reason, ..) = regenerate_after("nocert", |d| {
            fs::remove_file(d.join(CERT_FILE)).expect("rm");
        });
        assert!(
            reason.contains("missing") && reason.contains(CERT_FILE),
            "{reason}"
        );
    }

    #[test]
    fn missing_key_regenerates() {
        let (reason, ..) = regenerate_after("nokey", |d| {
            fs::remove_file(d.join(KEY_FILE)).expect("rm");
        });
        assert!(
            reason.contains("missing") && reason.contains(KEY_FILE),
            "{reason}"
        );
    }

    #[test]
    fn garbage_regenerates() {
        let (reason, ..) = regenerate_after("garbagekey", |d| {
            fs::write(d.join(KEY_FILE), b"\x00\xffnot a key").expect("write");
        });
        assert!(reason.contains("not valid PEM"), "{reason}");
        let (reason, ..) = regenerate_after("garbagepem", |d| {
            fs::write(
                d.join(KEY_FILE),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            )
            .expect("write");
        });
        assert!(reason.contains("private key"), "{reason}");
        let (reason, ..) = regenerate_after("garbagecert", |d| {
            fs::write(
                d.join(CERT_FILE),
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            )
            .expect("write");
        });
        assert!(reason.contains("not a valid X.509"), "{reason}");
    }

    #[test]
    fn p384_key_regenerates() {
        let (reason, ..) = regenerate_after("p384", |d| {
            let (cert, key) = self_signed_pem(&rcgen::PKCS_ECDSA_P384_SHA384);
            fs::write(d.join(CERT_FILE), cert).expect("write");
            fs::write(d.join(KEY_FILE), key).expect("write");
        });
        assert!(reason.contains("not an EC P-256 key"), "{reason}");
        assert!(reason.contains("P384"), "{reason}");
    }

    #[test]
    fn rsa_key_regenerates() {
        let (reason, ..) = regenerate_after("rsa", |d| {
            let (cert, key) = self_signed_pem(&rcgen::PKCS_RSA_SHA256);
            fs::write(d.join(CERT_FILE), cert).expect("write");
            fs::write(d.join(KEY_FILE), key).expect("write");
        });
        assert!(reason.contains("not an EC P-256 key"), "{reason}");
    }

    #[test]
    fn mismatched_pair_regenerates() {
        // What a crash between the two renames leaves: a new key next to the old certificate.
        let (reason, ..) = regenerate_after("mismatch", |d| {
            let other = Identity::generate().expect("generate");
            fs::write(d.join(KEY_FILE), other.key_pem).expect("write");
        });
        assert!(reason.contains("do not belong together"), "{reason}");
    }

    #[test]
    fn expiring_certificate_regenerates() {
        let (reason, ..) = regenerate_after("expiring", |d| {
            let now = now_unix();
            let soon = Identity::generate_with_validity(now - 3000 * DAY_SECS, now + 10 * DAY_SECS)
                .expect("generate");
            soon.store(d).expect("store");
        });
        assert!(reason.contains("expires in 9 days") || reason.contains("expires in 10 days"));
        let (reason, ..) = regenerate_after("expired", |d| {
            let now = now_unix();
            let old = Identity::generate_with_validity(now - 400 * DAY_SECS, now - 5 * DAY_SECS)
                .expect("generate");
            old.store(d).expect("store");
        });
        assert!(reason.contains("expired 5 days ago"), "{reason}");
    }

    #[test]
    fn sec1_key_is_accepted() {
        let dir = TempDir::new("sec1");
        let (first, _) = Identity::load_or_create(&dir.0).expect("create");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &first.key_der).expect("key");
        let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'static> =
            aws_lc_rs::encoding::AsDer::as_der(&key.private_key()).expect("sec1");
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            data_encoding::BASE64.encode(sec1.as_ref())
        );
        fs::write(dir.0.join(KEY_FILE), pem).expect("write");
        let (second, loaded) = Identity::load_or_create(&dir.0).expect("load");
        assert_eq!(loaded, Loaded::Existing);
        assert_eq!(second.remote_id, first.remote_id);
        assert_eq!(second.key_der, first.key_der);
    }

    #[test]
    fn unwritable_folder_is_an_error_with_the_path() {
        let dir = TempDir::new("unwritable");
        fs::create_dir_all(&dir.0).expect("mkdir");
        let file = dir.0.join("a-file");
        fs::write(&file, b"x").expect("write");
        let err = Identity::load_or_create(&file.join("sub")).expect_err("cannot create");
        assert!(err.to_string().contains("a-file"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_a_new_identity() {
        let dir = TempDir::new("unreadable");
        let (first, _) = Identity::load_or_create(&dir.0).expect("create");
        // Not readable as a file (root bypasses permission bits, so use a folder: EISDIR is
        // an I/O error like EACCES or EIO).
        let cert = dir.0.join(CERT_FILE);
        fs::remove_file(&cert).expect("rm");
        fs::create_dir(&cert).expect("mkdir");
        let err = Identity::load_or_create(&dir.0).expect_err("must not regenerate");
        assert!(err.to_string().contains(CERT_FILE), "{err}");
        // The key is untouched: putting the certificate back restores the same Remote ID.
        fs::remove_dir(&cert).expect("rmdir");
        fs::write(&cert, &first.cert_pem).expect("write");
        let (again, loaded) = Identity::load_or_create(&dir.0).expect("load");
        assert_eq!(
            (again.remote_id, loaded),
            (first.remote_id, Loaded::Existing)
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_key_mode_is_never_changed_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("symlink");
        Identity::load_or_create(&dir.0).expect("create");
        let key = dir.0.join(KEY_FILE);
        let elsewhere = dir.0.join("elsewhere.pem");
        fs::rename(&key, &elsewhere).expect("move");
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&elsewhere, &key).expect("symlink");
        Identity::load_or_create(&dir.0).expect("load through the link");
        let mode = fs::metadata(&elsewhere).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the link's target kept its mode");
        // A regular key file that others can read is still tightened.
        fs::remove_file(&key).expect("rm link");
        fs::rename(&elsewhere, &key).expect("move back");
        Identity::load_or_create(&dir.0).expect("load");
        let mode = fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_locked_data_folder_names_its_holder() {
        let dir = TempDir::new("lock");
        let held = lock_data_dir(&dir.0).expect("first lock");
        let err = lock_data_dir(&dir.0).expect_err("second lock");
        let text = err.to_string();
        assert!(text.contains(LOCK_FILE), "{text}");
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        drop(held);
        lock_data_dir(&dir.0).expect("free again");
    }

    fn answer_with(lines: &[&str]) -> String {
        let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        for l in lines {
            sdp.push_str(l);
            sdp.push_str("\r\n");
        }
        sdp
    }

    #[test]
    fn pin_check() {
        let good = format!("a=fingerprint:sha-256 {VECTOR_FP}");
        assert_eq!(
            verify_answer_fingerprint(&answer_with(&[&good]), VECTOR_ID),
            Ok(())
        );
        // Lower-case hex and hash name, other hashes ignored, session + media level.
        let lower = format!("A=Fingerprint:SHA-256 {}", VECTOR_FP.to_lowercase());
        let sdp = answer_with(&[&lower, "a=fingerprint:sha-1 00:11", "m=application", &good]);
        assert_eq!(verify_answer_fingerprint(&sdp, VECTOR_ID), Ok(()));

        // Wrong prefix: one bad line among good ones is enough.
        let mut wrong = VECTOR_FP.to_string();
        wrong.replace_range(0..2, "81");
        let wrong = format!("a=fingerprint:sha-256 {wrong}");
        let err = verify_answer_fingerprint(&answer_with(&[&good, &wrong]), VECTOR_ID)
            .expect_err("mismatch");
        assert!(matches!(err, PinError::Mismatch { .. }));
        assert!(err.to_string().contains("does not match"));

        // Only non-sha-256 fingerprints.
        let sdp = answer_with(&["a=fingerprint:sha-384 AA:BB", "a=fingerprint:sha-1 00:11"]);
        assert_eq!(
            verify_answer_fingerprint(&sdp, VECTOR_ID),
            Err(PinError::NoSha256Fingerprint)
        );

        // Truncated or junk value.
        let sdp = answer_with(&["a=fingerprint:sha-256 80:9E:94"]);
        assert!(matches!(
            verify_answer_fingerprint(&sdp, VECTOR_ID),
            Err(PinError::MalformedFingerprint(_))
        ));
        let sdp = answer_with(&["a=fingerprint:sha-256"]);
        assert!(matches!(
            verify_answer_fingerprint(&sdp, VECTOR_ID),
            Err(PinError::MalformedFingerprint(_))
        ));

        // Legacy and otherwise invalid IDs.
        for id in [
            "MA-ABCD-EFGH",
            "",
            "QCPJJTJMI3IDBNURU6XJJENRY",
            "QCPJJTJMI3IDBNURU6XJJENRYUA",
        ] {
            let err = verify_answer_fingerprint(&answer_with(&[&good]), id).expect_err(id);
            assert!(
                matches!(err, PinError::InvalidRemoteId { .. }),
                "{id}: {err}"
            );
        }
        // Non-canonical trailing bits are refused, as by the web app's decoder.
        let err = remote_id_prefix("QCPJJTJMI3IDBNURU6XJJENRYV").expect_err("trailing bits");
        assert!(err.to_string().contains("invalid Remote ID"));
    }

    #[test]
    fn str0m_presents_our_certificate() {
        use std::time::Instant;
        let identity = Identity::generate().expect("generate");
        let now = Instant::now();
        let mut ours = str0m::RtcConfig::new()
            .set_dtls_cert(identity.dtls_cert())
            .build(now);
        let fp = ours.direct_api().local_dtls_fingerprint().clone();
        assert_eq!(fp.hash_func, "sha-256");
        assert_eq!(fp.bytes, identity.fingerprint);
        assert_eq!(
            fp.to_string(),
            format!("sha-256 {}", identity.fingerprint_colon_hex())
        );

        // A client offers, we answer: the answer passes the client's pin check.
        let mut client = str0m::Rtc::new(now);
        let mut api = client.sdp_api();
        api.add_channel("ma-api".to_string());
        let (offer, _pending) = api.apply().expect("offer");
        let answer = ours.sdp_api().accept_offer(offer).expect("answer");
        let sdp = answer.to_sdp_string();
        assert_eq!(verify_answer_fingerprint(&sdp, &identity.remote_id), Ok(()));
        let other = Identity::generate().expect("generate");
        assert!(verify_answer_fingerprint(&sdp, &other.remote_id).is_err());
    }
}
