//! DKIM signing of outgoing mail (RFC 6376) with lettre's signer: keys read
//! from PEM (RSA PKCS#1/PKCS#8, Ed25519) without panicking on bad input, and
//! signing on a thread whose stack fits the headers.
use super::*;

/// Headers the DKIM signature covers (those present; a listed header that is
/// absent is signed as absent, so it cannot be added later). `Content-Type`
/// is not among them: lettre keeps the top-level `Content-Type` with the MIME
/// body rather than the message headers, so its signer cannot hash it.
const DKIM_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Auto-Submitted",
];

/// Smallest RSA key accepted (RFC 8301: at least 1024 bits; 2048 recommended).
const DKIM_MIN_RSA_BITS: usize = 1024;

/// Longest header block that is signed. lettre's relaxed canonicalization
/// recurses once per character of the signed headers, so signing runs on a
/// thread whose stack grows with them ([`DKIM_STACK_PER_BYTE`]).
const DKIM_MAX_HEADER_BYTES: usize = 256 * 1024;
/// Stack for the signing thread per header byte (measured: about 60 in a
/// debug build), on top of [`DKIM_STACK_BASE`]. Untouched stack costs no memory.
const DKIM_STACK_PER_BYTE: usize = 512;
const DKIM_STACK_BASE: usize = 1 << 20;

/// Why a DKIM signer cannot be set up. Never shows key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimError {
    #[error("{0:?} is not a domain name (letters, digits and '-', dot-separated)")]
    Domain(String),
    #[error("{0:?} is not a DKIM selector (letters, digits and '-', dot-separated)")]
    Selector(String),
    #[error(
        "not a private key: {0} (expected PEM: PKCS#1 'RSA PRIVATE KEY', PKCS#8 'PRIVATE KEY' for RSA or Ed25519, or an Ed25519 seed in base64)"
    )]
    Format(String),
    #[error(
        "the key is encrypted; store it decrypted and readable only by switchboard (openssl pkey -in key.pem -out plain.pem)"
    )]
    Encrypted,
    #[error("the key is an {found} key but dkim_algorithm is {configured}")]
    Mismatch {
        found: DkimAlgorithm,
        configured: DkimAlgorithm,
    },
    #[error("the RSA key has {0} bits; DKIM needs at least 1024 (use 2048)")]
    WeakRsa(usize),
    #[error("the key cannot be used: {0}")]
    Key(String),
}

/// Signs outgoing mail with DKIM (RFC 6376; RSA-SHA256 or Ed25519-SHA256,
/// relaxed/relaxed canonicalization) for `domain`, whose public key is
/// published in DNS at `<selector>._domainkey.<domain>`.
///
/// The signature carries the signing time (`t=`, set by lettre from the
/// clock), so signing the same message twice gives two different
/// `DKIM-Signature` values; everything else is identical.
pub struct DkimSigner {
    config: DkimConfig,
    domain: String,
    selector: String,
    algorithm: DkimAlgorithm,
}

impl std::fmt::Debug for DkimSigner {
    // lettre's key types would print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// Checks the domain and selector and reads the private key: PEM
    /// (PKCS#1 RSA, PKCS#8 RSA or Ed25519, unencrypted) or, for Ed25519, the
    /// 32-byte seed in base64 as lettre takes it.
    pub fn new(
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
        private_key: &str,
    ) -> Result<DkimSigner, DkimError> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_dns_name(&domain) || !domain.contains('.') {
            return Err(DkimError::Domain(domain));
        }
        let selector = selector.trim().to_owned();
        if !is_dns_name(&selector) {
            return Err(DkimError::Selector(selector));
        }
        let key = match (key_material(private_key)?, algorithm) {
            (KeyMaterial::Rsa { pkcs1_pem }, DkimAlgorithm::Rsa) => {
                DkimSigningKey::new(&pkcs1_pem, DkimSigningAlgorithm::Rsa)
            }
            (KeyMaterial::Ed25519 { seed_base64 }, DkimAlgorithm::Ed25519) => {
                DkimSigningKey::new(&seed_base64, DkimSigningAlgorithm::Ed25519)
            }
            (KeyMaterial::Rsa { .. }, configured) => {
                return Err(DkimError::Mismatch {
                    found: DkimAlgorithm::Rsa,
                    configured,
                });
            }
            (KeyMaterial::Ed25519 { .. }, configured) => {
                return Err(DkimError::Mismatch {
                    found: DkimAlgorithm::Ed25519,
                    configured,
                });
            }
        }
        .map_err(|e| {
            let detail = e.source().map(|s| format!(": {s}")).unwrap_or_default();
            DkimError::Key(format!("{e}{detail}"))
        })?;
        let headers = DKIM_SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        // Relaxed headers: lettre folds the finished DKIM-Signature header
        // differently from the one it hashed (with an empty b=).
        let canonicalization = DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        };
        Ok(DkimSigner {
            config: DkimConfig::new(
                selector.clone(),
                domain.clone(),
                key,
                headers,
                canonicalization,
            ),
            domain,
            selector,
            algorithm,
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// The header names the signature covers (when present).
    pub fn signed_headers() -> &'static [&'static str] {
        DKIM_SIGNED_HEADERS
    }

    /// Adds the DKIM-Signature field. Headers too long to sign make the
    /// message [`SendError::Invalid`].
    pub(super) fn sign(&self, message: &mut lettre::Message) -> Result<(), SendError> {
        let header_bytes = message.headers().to_string().len();
        if header_bytes > DKIM_MAX_HEADER_BYTES {
            return Err(SendError::Invalid(format!(
                "the headers are too long to sign ({} KiB, at most {} KiB)",
                header_bytes / 1024,
                DKIM_MAX_HEADER_BYTES / 1024
            )));
        }
        let stack = DKIM_STACK_BASE + header_bytes * DKIM_STACK_PER_BYTE;
        std::thread::scope(|scope| {
            let signing = std::thread::Builder::new()
                .name("dkim-sign".into())
                .stack_size(stack)
                .spawn_scoped(scope, || message.sign(&self.config))
                .map_err(|e| SendError::Transient(format!("cannot start DKIM signing: {e}")))?;
            // lettre unwraps inside; a panic there fails this message only.
            signing
                .join()
                .map_err(|_| SendError::Invalid("DKIM signing failed".into()))
        })
    }
}

/// A DNS name of letters, digits and inner hyphens, dot-separated (also
/// keeps `;` and `=` out of the DKIM-Signature tags).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A private key in the form lettre's [`DkimSigningKey::new`] takes.
pub(super) enum KeyMaterial {
    Rsa { pkcs1_pem: String },
    Ed25519 { seed_base64: String },
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

pub(super) fn key_material(text: &str) -> Result<KeyMaterial, DkimError> {
    let text = text.trim();
    if !text.contains("-----BEGIN ") {
        let compact: String = text.split_whitespace().collect();
        return match BASE64.decode(compact.as_bytes()) {
            Ok(seed) if seed.len() == 32 => Ok(KeyMaterial::Ed25519 {
                seed_base64: compact,
            }),
            _ => Err(DkimError::Format("no PEM block".into())),
        };
    }
    let mut labels = Vec::new();
    for block in pem_blocks(text) {
        let (label, headers, der) = block?;
        match label.as_str() {
            "RSA PRIVATE KEY" if headers.contains("ENCRYPTED") => {
                return Err(DkimError::Encrypted);
            }
            "RSA PRIVATE KEY" => return rsa_pkcs1(&der),
            "PRIVATE KEY" => return pkcs8(&der),
            "ENCRYPTED PRIVATE KEY" => return Err(DkimError::Encrypted),
            other => labels.push(other.to_owned()),
        }
    }
    Err(DkimError::Format(format!(
        "no usable private key among the PEM blocks {labels:?}"
    )))
}

/// Each `-----BEGIN X-----` … `-----END X-----` block: its label, its
/// header lines (RFC 1421 `Proc-Type: …`) and its decoded bytes.
fn pem_blocks(text: &str) -> impl Iterator<Item = Result<(String, String, Vec<u8>), DkimError>> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find("-----BEGIN ")?;
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            rest = "";
            return Some(Err(DkimError::Format("unterminated PEM header".into())));
        };
        let label = after[..label_end].to_owned();
        let body_and_rest = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_and_rest.find(&end_marker) else {
            rest = "";
            return Some(Err(DkimError::Format(format!("no END line for {label}"))));
        };
        let body = &body_and_rest[..end];
        rest = &body_and_rest[end + end_marker.len()..];
        let mut headers = String::new();
        let mut b64 = String::new();
        for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.contains(':') {
                headers.push_str(line);
                headers.push('\n');
            } else {
                b64.push_str(line);
            }
        }
        Some(
            BASE64
                .decode(b64.as_bytes())
                .map(|der| (label.clone(), headers, der))
                .map_err(|e| DkimError::Format(format!("{label}: bad base64: {e}"))),
        )
    })
}

/// A minimal DER reader: enough to take PKCS#8 and PKCS#1 keys apart.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }
}

const DER_INTEGER: u8 = 0x02;
const DER_OCTET_STRING: u8 = 0x04;
const DER_OID: u8 = 0x06;
const DER_SEQUENCE: u8 = 0x30;

/// PKCS#8 `PrivateKeyInfo`: RSA (the inner PKCS#1 key) or Ed25519 (the seed).
fn pkcs8(der: &[u8]) -> Result<KeyMaterial, DkimError> {
    let bad = || DkimError::Format("malformed PKCS#8 structure".into());
    let mut outer = Der(Der(der).expect(DER_SEQUENCE).ok_or_else(bad)?);
    outer.expect(DER_INTEGER).ok_or_else(bad)?;
    let mut algorithm = Der(outer.expect(DER_SEQUENCE).ok_or_else(bad)?);
    let oid = algorithm.expect(DER_OID).ok_or_else(bad)?;
    let private_key = outer.expect(DER_OCTET_STRING).ok_or_else(bad)?;
    if oid == OID_RSA_ENCRYPTION {
        rsa_pkcs1(private_key)
    } else if oid == OID_ED25519 {
        let seed = Der(private_key).expect(DER_OCTET_STRING).ok_or_else(bad)?;
        if seed.len() != 32 {
            return Err(bad());
        }
        Ok(KeyMaterial::Ed25519 {
            seed_base64: BASE64.encode(seed),
        })
    } else {
        Err(DkimError::Format(
            "a PKCS#8 key that is neither RSA nor Ed25519 (DKIM signs with those two)".into(),
        ))
    }
}

/// PKCS#1 `RSAPrivateKey`: checks the modulus size, gives it back as PEM.
fn rsa_pkcs1(der: &[u8]) -> Result<KeyMaterial, DkimError> {
    let bad = || DkimError::Format("malformed PKCS#1 RSA key".into());
    let mut key = Der(Der(der).expect(DER_SEQUENCE).ok_or_else(bad)?);
    key.expect(DER_INTEGER).ok_or_else(bad)?;
    let modulus = key.expect(DER_INTEGER).ok_or_else(bad)?;
    let significant: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => &[],
    };
    let bits = match significant.first() {
        Some(top) => significant.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if bits < DKIM_MIN_RSA_BITS {
        return Err(DkimError::WeakRsa(bits));
    }
    let b64 = BASE64.encode(der);
    let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END RSA PRIVATE KEY-----\n");
    Ok(KeyMaterial::Rsa { pkcs1_pem: pem })
}
