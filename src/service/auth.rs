//! Signed tokens at the upgrade: a token (JWT) → the session's identity (its `sub`, the name
//! others see), the rooms it may join, and the moment it expires.
//!
//! A [`Verifier`] is built from the `[auth]` table ([`Verifier::from_config`], which reads
//! and checks the key file): HS256 with `auth.jwt_secret`, or RS256 / ES256 / EdDSA with the
//! PEM public key of `auth.jwt_public_key_file`, the algorithm following from the key type.
//! Exactly that one algorithm is accepted: the algorithm comes from the configuration, never
//! from the token, so `alg: none` and an HS256 token "signed" with the public key's bytes are
//! refused; so is a header with `crit` (this server understands no extension). `exp` is
//! required and `nbf` checked, here rather than by jsonwebtoken (which reads them as `u64`
//! only): each must be a NumericDate, any JSON number (a fraction, a negative, one past
//! `u64`: an `nbf` of 1e300 is far ahead, an `exp` of 1e300 far off), both with [`LEEWAY`] —
//! the same leeway the session's expiry timer adds. `iss` / `aud` are required and checked
//! when configured.
//!
//! Every refusal is an [`AuthError`] that maps to 401 ([`Refusal::Unauthorized`]) or 403
//! ([`Refusal::Forbidden`], a room the token does not grant). This module is pure: no actix
//! types, no I/O but reading the key file once, and no message of it ever contains a token
//! or the secret (tokens are credentials; logs are not a place for them); what a message
//! shows of a token (its `alg`) is escaped, so that it cannot split a log line.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{is_valid_name, AuthSettings, ConfigError};

/// Clock leeway for `exp` and `nbf`, at the upgrade and for the session's expiry: a session
/// closes once `exp` + `LEEWAY` has passed, the same moment from which the upgrade refuses
/// the token.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// The close code of a session whose token expired (the clients take a fresh token on it).
pub const TOKEN_EXPIRED_CODE: u16 = 3000;
/// The close reason of a session whose token expired.
pub const TOKEN_EXPIRED_REASON: &str = "token expired";

/// How an upgrade is refused: the HTTP status and the `reason` label of
/// `wsgrace_upgrades_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 401: no usable token.
    Unauthorized,
    /// HTTP 403: a valid token that does not grant the room.
    Forbidden,
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Unauthorized => 401,
            Refusal::Forbidden => 403,
        }
    }

    /// The metric's `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
        }
    }
}

/// Why a token was refused. `Display` is short and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in `?token=` nor in `Authorization: Bearer`.
    #[error("no token")]
    Missing,
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm than the configured one (`none` included).
    /// `Display` shows `found` escaped (`escape_debug`): it is a peer's text, and a newline in
    /// it must not split a log line.
    #[error("wrong algorithm {}, expected {expected:?}", .found.escape_debug())]
    WrongAlgorithm {
        /// The header's `alg`, as far as it could be read (at most 16 characters, as sent).
        found: String,
        /// The configured algorithm.
        expected: Algorithm,
    },
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` + leeway has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` - leeway is still ahead.
    #[error("token not valid yet")]
    NotYetValid,
    /// The header has a `crit` parameter: it names extensions that must be understood
    /// (RFC 7515 §4.1.11), and this server understands none.
    #[error("critical header extensions (crit) are not supported")]
    UnknownCritical,
    /// `exp` or `nbf` (the name given) is not a NumericDate (RFC 7519 §2: a JSON number).
    #[error("{0} is not a NumericDate")]
    NotNumericDate(&'static str),
    /// A required claim (`exp`, or `iss`/`aud` when configured) is missing. The name is
    /// ours, not the token's; `Display` escapes it all the same.
    #[error("missing claim {}", .0.escape_debug())]
    MissingClaim(String),
    /// `iss` is not `auth.issuer`.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not name `auth.audience`.
    #[error("wrong audience")]
    WrongAudience,
    /// `sub` missing, or not 1–64 characters of `[A-Za-z0-9_.-]`.
    #[error("sub must be 1-64 characters of [A-Za-z0-9_.-]")]
    BadSubject,
    /// `rooms` is not a list of strings.
    #[error("rooms must be a list of strings")]
    BadRooms,
    /// The token is valid but its `rooms` do not grant the room asked for (the room, which
    /// `Display` does not show).
    #[error("room not granted by the token")]
    RoomNotGranted(String),
}

impl AuthError {
    /// 401 for every problem with the token itself, 403 for a room it does not grant.
    pub fn refusal(&self) -> Refusal {
        match self {
            AuthError::RoomNotGranted(_) => Refusal::Forbidden,
            _ => Refusal::Unauthorized,
        }
    }
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: the session's name.
    pub name: String,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

impl Identity {
    /// When the session must close: `exp` + [`LEEWAY`].
    pub fn closes_at(&self) -> SystemTime {
        self.expires_at + LEEWAY
    }
}

/// The `rooms` claim: `"*"` (any room), exact names, `"prefix.*"` (every room that starts
/// with `prefix.`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomGrants(Vec<String>);

impl RoomGrants {
    /// Grants as listed in a token.
    pub fn new(grants: Vec<String>) -> Self {
        RoomGrants(grants)
    }

    /// Whether `room` is granted.
    pub fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|grant| match grant.strip_suffix('*') {
            // "*" alone, or "prefix.*": the prefix keeps its dot, so "team.*" grants
            // "team.a" but neither "team" nor "teams".
            Some(prefix) if prefix.is_empty() || prefix.ends_with('.') => {
                room.starts_with(prefix) && room.len() > prefix.len()
            }
            _ => grant == room,
        })
    }
}

/// What a verified token says: the identity and the rooms it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who.
    pub identity: Identity,
    /// Which rooms.
    pub rooms: RoomGrants,
}

/// The token an upgrade carries: `?token=` first, else `Authorization: Bearer`. Empty
/// values count as none.
pub fn request_token<'a>(
    query: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    query
        .filter(|token| !token.is_empty())
        .or(bearer.filter(|token| !token.is_empty()))
}

/// Checks tokens for one configured key and algorithm.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key (a secret for HS256) is not shown.
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("iss", &self.validation.iss)
            .field("aud", &self.validation.aud)
            .finish()
    }
}

/// Why a public key file is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A private key where the public one belongs.
    #[error("is a private key; give the public key (openssl pkey -in KEY -pubout)")]
    Private,
    /// Not PEM, or no key jsonwebtoken can use.
    #[error("is not a PEM public key (\"-----BEGIN PUBLIC KEY-----\": RSA, EC P-256 or Ed25519)")]
    NotPem,
    /// An EC key on a curve ES256 cannot use.
    #[error("is an EC key on another curve than P-256 (ES256 needs prime256v1)")]
    Curve,
    /// An RSA key too short to verify with: ring refuses every signature of it.
    #[error("is an RSA key of {0} bits; RS256 needs at least {MIN_RSA_BITS}")]
    RsaTooShort(usize),
}

/// The shortest RSA modulus ring verifies RS256 signatures with.
pub const MIN_RSA_BITS: usize = 2048;

/// The DER of the OID of P-256 (prime256v1, 1.2.840.10045.3.1.7).
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

impl Verifier {
    /// HS256 with `secret` (the configuration asks for at least 32 bytes).
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256, ES256 or EdDSA, after the type of the PEM public key `pem`.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
        let label = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("-----BEGIN "))
            .and_then(|rest| rest.strip_suffix("-----"))
            .ok_or(KeyError::NotPem)?;
        if label.contains("PRIVATE") {
            return Err(KeyError::Private);
        }
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            return Err(KeyError::NotPem);
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            // Taken as is, a short key would start the server and then refuse every token as
            // a bad signature.
            if let Some(bits) = pem_body(text).and_then(|der| rsa_modulus_bits(label, &der)) {
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::RsaTooShort(bits));
                }
            }
            return Ok(Verifier::new(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            if !pem_body(text).is_some_and(|der| der.windows(P256_OID.len()).any(|w| w == P256_OID))
            {
                return Err(KeyError::Curve);
            }
            return Ok(Verifier::new(key, Algorithm::ES256));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::EdDSA));
        }
        Err(KeyError::NotPem)
    }

    /// The verifier of the `[auth]` table, `None` when authentication is off. Reads the key
    /// file; errors name the key (`auth.jwt_public_key_file`) and `config_path` the file,
    /// like every [`ConfigError`]. Call it after [`crate::config::Config::validate`].
    pub fn from_config(
        auth: &AuthSettings,
        config_path: &Path,
    ) -> Result<Option<Verifier>, ConfigError> {
        let invalid = |message: String| ConfigError::InvalidValue {
            path: config_path.to_owned(),
            key: "auth.jwt_public_key_file".to_owned(),
            message,
        };
        let verifier = if !auth.jwt_public_key_file.is_empty() {
            let file = &auth.jwt_public_key_file;
            let pem = std::fs::read(file)
                .map_err(|err| invalid(format!("cannot read {file:?}: {err}")))?;
            Verifier::from_public_key_pem(&pem).map_err(|err| invalid(format!("{file:?} {err}")))?
        } else if !auth.jwt_secret.is_empty() {
            Verifier::hs256(auth.jwt_secret.as_bytes())
        } else {
            return Ok(None);
        };
        Ok(Some(
            verifier
                .with_issuer(&auth.issuer)
                .with_audience(&auth.audience),
        ))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        // `exp` and `nbf` are checked by `validity`: jsonwebtoken 9 takes them as `u64` and
        // ignores an `nbf` it cannot read as one (a string, 1e300), and calls a too large
        // `exp` missing.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // Without a configured audience, a token's `aud` is not ours to judge.
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        Verifier {
            key,
            validation,
            algorithm,
        }
    }

    /// Requires `iss` to be `issuer` (nothing when empty).
    pub fn with_issuer(mut self, issuer: &str) -> Verifier {
        if !issuer.is_empty() {
            self.validation.set_issuer(&[issuer]);
            self.validation
                .required_spec_claims
                .insert("iss".to_owned());
        }
        self
    }

    /// Requires `aud` to be or contain `audience` (nothing when empty).
    pub fn with_audience(mut self, audience: &str) -> Verifier {
        if !audience.is_empty() {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            self.validation
                .required_spec_claims
                .insert("aud".to_owned());
        }
        self
    }

    /// The one algorithm accepted.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verifies `token` (algorithm, no `crit`, signature, `iss`, `aud`, `exp`, `nbf`, `sub`,
    /// `rooms`) against the clock. An `exp` / `nbf` that is a list or an object is refused
    /// as [`AuthError::Malformed`] (jsonwebtoken cannot read such claims at all); any other
    /// JSON value that is not a number as [`AuthError::NotNumericDate`].
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        self.check_header(token)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|err| self.error(err.kind()))?;
        let claims = data.claims;
        let expires_at = validity(&claims, SystemTime::now())?;
        let name = match claims.get("sub") {
            Some(Value::String(sub)) if is_valid_name(sub) => sub.clone(),
            _ => return Err(AuthError::BadSubject),
        };
        let rooms = match claims.get("rooms") {
            None => Vec::new(),
            Some(Value::Array(rooms)) => rooms
                .iter()
                .map(|room| room.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(AuthError::BadRooms)?,
            Some(_) => return Err(AuthError::BadRooms),
        };
        Ok(Grant {
            identity: Identity { name, expires_at },
            rooms: RoomGrants::new(rooms),
        })
    }

    /// The upgrade's check: a token, valid, that grants `room`.
    pub fn admit(&self, token: Option<&str>, room: &str) -> Result<Identity, AuthError> {
        let grant = self.verify(token.ok_or(AuthError::Missing)?)?;
        if !grant.rooms.allows(room) {
            return Err(AuthError::RoomNotGranted(room.to_owned()));
        }
        Ok(grant.identity)
    }

    /// Refuses a header whose `alg` is not the configured one before any key is used, so that
    /// `alg: none` and unknown algorithms are named as what they are; then one with `crit`,
    /// whatever its value (RFC 7515 §4.1.11: a list of extensions the recipient must
    /// understand, never empty; this server understands none). jsonwebtoken's `Header` has
    /// no `crit` and would ignore it.
    fn check_header(&self, token: &str) -> Result<(), AuthError> {
        let header = token.split('.').next().ok_or(AuthError::Malformed)?;
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Malformed)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
        let found = match header.get("alg") {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err(AuthError::Malformed),
        };
        let expected = format!("{:?}", self.algorithm);
        if found != expected {
            return Err(AuthError::WrongAlgorithm {
                found: found.chars().take(16).collect(),
                expected: self.algorithm,
            });
        }
        if header.contains_key("crit") {
            return Err(AuthError::UnknownCritical);
        }
        Ok(())
    }

    fn error(&self, kind: &ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                AuthError::WrongAlgorithm {
                    found: "?".to_owned(),
                    expected: self.algorithm,
                }
            }
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidSubject => AuthError::BadSubject,
            // A key that ring cannot use shows as a signature that never verifies.
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::RsaFailedSigning => AuthError::BadSignature,
            _ => AuthError::Malformed,
        }
    }
}

/// The latest `exp` taken as a moment (1e15 s after the epoch, some 31 million years): a
/// later one is that far future, and the session's deadline (`exp` + [`LEEWAY`]) must not
/// overflow.
const MAX_EXP_SECS: f64 = 1e15;

/// The claim `name` as a NumericDate (RFC 7519 §2: seconds since the epoch, any JSON number,
/// fractional, negative or past `u64` included), `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_f64()
            .filter(|secs| secs.is_finite())
            .map(Some)
            .ok_or(AuthError::NotNumericDate(name)),
        Some(_) => Err(AuthError::NotNumericDate(name)),
    }
}

/// The validity window of raw claims at `now`, with [`LEEWAY`] on both sides: `exp`
/// required, `nbf` optional, both NumericDates. Refused when `exp` + leeway is before `now`
/// ([`AuthError::Expired`]; a negative `exp`, before 1970, always is) or `nbf` - leeway after
/// it ([`AuthError::NotYetValid`]; an `nbf` past `u64`, e.g. 1e300, is far ahead; a negative
/// one is in the past). Returns `exp` as a moment, at most [`MAX_EXP_SECS`] after the epoch.
fn validity(claims: &Map<String, Value>, now: SystemTime) -> Result<SystemTime, AuthError> {
    let exp =
        numeric_date(claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".to_owned()))?;
    let nbf = numeric_date(claims, "nbf")?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    };
    let leeway = LEEWAY.as_secs_f64();
    if exp + leeway < now {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf - leeway > now) {
        return Err(AuthError::NotYetValid);
    }
    // Clamped: `from_secs_f64` panics on a negative value (an `exp` before 1970 with a
    // clock before it too).
    UNIX_EPOCH
        .checked_add(Duration::from_secs_f64(exp.clamp(0.0, MAX_EXP_SECS)))
        .ok_or(AuthError::Expired)
}

/// The DER inside a PEM text (the base64 between the armor lines).
fn pem_body(text: &str) -> Option<Vec<u8>> {
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|line| !line.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END "))
        .collect();
    STANDARD.decode(body).ok()
}

/// The first DER element of `der`: its tag, its contents and what follows it.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len, rest) = rest.split_at(count);
        let len = len
            .iter()
            .fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The modulus length in bits of the RSA public key `der`: a SubjectPublicKeyInfo under the
/// PEM label `PUBLIC KEY`, PKCS#1 under `RSA PUBLIC KEY`. `None` if it is neither.
fn rsa_modulus_bits(label: &str, der: &[u8]) -> Option<usize> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    let mut key = der;
    if label == "PUBLIC KEY" {
        let (SEQUENCE, info, _) = der_element(der)? else {
            return None;
        };
        let (SEQUENCE, _algorithm, rest) = der_element(info)? else {
            return None;
        };
        let (BIT_STRING, bits, _) = der_element(rest)? else {
            return None;
        };
        // A BIT STRING starts with its count of unused bits: none here.
        key = bits.strip_prefix(&[0])?;
    }
    let (SEQUENCE, rsa, _) = der_element(key)? else {
        return None;
    };
    let (INTEGER, modulus, _) = der_element(rsa)? else {
        return None;
    };
    let start = modulus.iter().position(|byte| *byte != 0)?;
    let leading = modulus[start].leading_zeros() as usize;
    Some((modulus.len() - start) * 8 - leading)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
