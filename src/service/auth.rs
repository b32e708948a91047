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
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// What, the token, the expected error, its status.
    type Case = (&'static str, Option<String>, fn(&AuthError) -> bool, u16);

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn hs256(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn grants() {
        let grants = RoomGrants::new(vec!["lobby".into(), "team.*".into()]);
        for (room, allowed) in [
            ("lobby", true),
            ("lobby2", false),
            ("team.a", true),
            ("team.a.b", true),
            ("team", false),
            ("team.", false),
            ("teams", false),
            ("other", false),
        ] {
            assert_eq!(grants.allows(room), allowed, "{room}");
        }
        assert!(RoomGrants::new(vec!["*".into()]).allows("anything"));
        assert!(!RoomGrants::default().allows("lobby"));
        // A `*` not after a dot is a literal name, not a pattern.
        assert!(!RoomGrants::new(vec!["team*".into()]).allows("teams"));
    }

    #[test]
    fn tokens_come_from_the_query_or_the_bearer_header() {
        assert_eq!(request_token(Some("q"), Some("Bearer h")), Some("q"));
        assert_eq!(request_token(None, Some("Bearer h")), Some("h"));
        assert_eq!(request_token(None, Some("bearer  h ")), Some("h"));
        assert_eq!(request_token(Some(""), Some("Bearer h")), Some("h"));
        assert_eq!(request_token(None, Some("Basic abc")), None);
        assert_eq!(request_token(None, Some("Bearer ")), None);
        assert_eq!(request_token(None, None), None);
    }

    #[test]
    fn a_good_token_names_the_session() {
        let verifier = Verifier::hs256(SECRET);
        let exp = now() + 60;
        let token = hs256(json!({"sub": "ann", "rooms": ["lobby"], "exp": exp}));
        let identity = verifier.admit(Some(&token), "lobby").unwrap();
        assert_eq!(identity.name, "ann");
        assert_eq!(identity.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
        assert_eq!(identity.closes_at(), identity.expires_at + LEEWAY);
    }

    #[test]
    fn bad_tokens_and_their_refusals() {
        let verifier = Verifier::hs256(SECRET)
            .with_issuer("me")
            .with_audience("chat");
        let t = now();
        let good = json!({"sub": "ann", "rooms": ["*"], "exp": t + 60, "iss": "me", "aud": "chat"});
        let with = |key: &str, value: Value| {
            let mut claims = good.clone();
            claims[key] = value;
            hs256(claims)
        };
        let without = |key: &str| {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(key);
            hs256(claims)
        };
        let good_token = hs256(good.clone());
        let (header, rest) = good_token.split_once('.').unwrap();
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            rest.split_once('.').unwrap().0
        );
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let bad_signature = format!("{}x", &good_token[..good_token.len() - 1]);
        let bad_signature = if bad_signature == good_token {
            format!("{header}.{rest}A")
        } else {
            bad_signature
        };
        let other_key = encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another secret of 32 bytes......"),
        )
        .unwrap();
        let cases: Vec<Case> = vec![
            ("missing", None, |e| *e == AuthError::Missing, 401),
            (
                "garbage",
                Some("garbage".into()),
                |e| *e == AuthError::Malformed,
                401,
            ),
            (
                "two parts",
                Some("a.b".into()),
                |e| *e == AuthError::Malformed,
                401,
            ),
            (
                "alg none",
                Some(none),
                |e| matches!(e, AuthError::WrongAlgorithm { found, .. } if found == "none"),
                401,
            ),
            (
                "HS512",
                Some(hs512),
                |e| matches!(e, AuthError::WrongAlgorithm { .. }),
                401,
            ),
            (
                "bad signature",
                Some(bad_signature),
                |e| *e == AuthError::BadSignature,
                401,
            ),
            (
                "other secret",
                Some(other_key),
                |e| *e == AuthError::BadSignature,
                401,
            ),
            (
                "expired",
                Some(with("exp", json!(t - 10))),
                |e| *e == AuthError::Expired,
                401,
            ),
            (
                "no exp",
                Some(without("exp")),
                |e| *e == AuthError::MissingClaim("exp".into()),
                401,
            ),
            (
                "not yet",
                Some(with("nbf", json!(t + 60))),
                |e| *e == AuthError::NotYetValid,
                401,
            ),
            (
                "wrong iss",
                Some(with("iss", json!("you"))),
                |e| *e == AuthError::WrongIssuer,
                401,
            ),
            (
                "no iss",
                Some(without("iss")),
                |e| *e == AuthError::MissingClaim("iss".into()),
                401,
            ),
            (
                "wrong aud",
                Some(with("aud", json!(["x", "y"]))),
                |e| *e == AuthError::WrongAudience,
                401,
            ),
            (
                "no aud",
                Some(without("aud")),
                |e| *e == AuthError::MissingClaim("aud".into()),
                401,
            ),
            (
                "no sub",
                Some(without("sub")),
                |e| *e == AuthError::BadSubject,
                401,
            ),
            (
                "bad sub",
                Some(with("sub", json!("a b"))),
                |e| *e == AuthError::BadSubject,
                401,
            ),
            (
                "numeric sub",
                Some(with("sub", json!(7))),
                |e| *e == AuthError::BadSubject,
                401,
            ),
            (
                "rooms not a list",
                Some(with("rooms", json!("lobby"))),
                |e| *e == AuthError::BadRooms,
                401,
            ),
            (
                "no rooms",
                Some(without("rooms")),
                |e| *e == AuthError::RoomNotGranted("lobby".into()),
                403,
            ),
            (
                "other room",
                Some(with("rooms", json!(["ops", "team.*"]))),
                |e| *e == AuthError::RoomNotGranted("lobby".into()),
                403,
            ),
        ];
        for (what, token, expected, status) in cases {
            let err = verifier.admit(token.as_deref(), "lobby").unwrap_err();
            assert!(expected(&err), "{what}: {err:?}");
            assert_eq!(err.refusal().status(), status, "{what}");
            if let Some(token) = &token {
                assert!(!err.to_string().contains(token.as_str()), "{what}: {err}");
            }
        }
        assert!(verifier
            .admit(Some(&with("aud", json!(["x", "chat"]))), "lobby")
            .is_ok());
        // Within the leeway, an expired token still passes.
        assert!(verifier
            .admit(Some(&with("exp", json!(t - 2))), "lobby")
            .is_ok());
    }

    /// A token of the raw JSON texts `header` and `claims` (so that it may hold what neither
    /// `Header` nor `Value` can: a `crit`, a number past `u64`), signed with HS256.
    fn signed(header: &str, claims: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    /// Issue 19: what RFC 7515 / 7519 call invalid is refused (`crit`, an `exp` / `nbf` that
    /// is not a NumericDate, an `nbf` past `u64`), what they call valid is accepted (a float,
    /// an `exp` past `u64`: far future, no overflow), and a peer's `alg` reaches `Display`
    /// escaped.
    #[test]
    fn tokens_the_jwt_rfcs_call_invalid_are_refused() {
        let verifier = Verifier::hs256(SECRET);
        let t = now();
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let claims = |times: &str| format!(r#"{{"sub":"ann","rooms":["*"],{times}}}"#);
        let exp = format!(r#""exp":{}"#, t + 60);
        let crit = |crit: &str| {
            signed(
                &format!(r#"{{"alg":"HS256","crit":{crit}}}"#),
                &claims(&exp),
            )
        };
        let nbf = |nbf: &str| signed(header, &claims(&format!(r#"{exp},"nbf":{nbf}"#)));
        let exp_is = |exp: &str| signed(header, &claims(&format!(r#""exp":{exp}"#)));
        let alg = |alg: &str| signed(&format!(r#"{{"alg":{alg}}}"#), &claims(&exp));
        let wrong_alg = |found: &str| AuthError::WrongAlgorithm {
            found: found.to_owned(),
            expected: Algorithm::HS256,
        };
        let refused = [
            ("crit [\"x\"]", crit(r#"["x"]"#), AuthError::UnknownCritical),
            ("crit []", crit("[]"), AuthError::UnknownCritical),
            ("crit \"x\"", crit(r#""x""#), AuthError::UnknownCritical),
            (
                "nbf \"string\"",
                nbf(r#""string""#),
                AuthError::NotNumericDate("nbf"),
            ),
            ("nbf true", nbf("true"), AuthError::NotNumericDate("nbf")),
            ("nbf null", nbf("null"), AuthError::NotNumericDate("nbf")),
            // jsonwebtoken cannot read the claims at all.
            ("nbf [1]", nbf("[1]"), AuthError::Malformed),
            ("nbf 1e300", nbf("1e300"), AuthError::NotYetValid),
            (
                "nbf 2^64",
                nbf("18446744073709551616"),
                AuthError::NotYetValid,
            ),
            (
                "nbf now+60",
                nbf(&(t + 60).to_string()),
                AuthError::NotYetValid,
            ),
            (
                "exp \"string\"",
                exp_is(r#""string""#),
                AuthError::NotNumericDate("exp"),
            ),
            ("exp null", exp_is("null"), AuthError::NotNumericDate("exp")),
            (
                "exp now-60",
                exp_is(&(t - 60).to_string()),
                AuthError::Expired,
            ),
            (
                "alg with a newline",
                alg(r#""HS256\nFORGED""#),
                wrong_alg("HS256\nFORGED"),
            ),
            ("alg with a CR", alg(r#""\rFORGED""#), wrong_alg("\rFORGED")),
            (
                "alg of 17 characters",
                alg(r#""\n234567890123456X""#),
                wrong_alg("\n234567890123456"),
            ),
        ];
        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
        let in_a_minute = at((t + 60) as f64);
        let accepted = [
            ("nbf now-60", nbf(&(t - 60).to_string()), in_a_minute),
            ("nbf 1.5e9", nbf("1.5e9"), in_a_minute),
            ("nbf -1", nbf("-1"), in_a_minute),
            ("exp 1e300", exp_is("1e300"), at(1e15)),
            ("exp 2^64", exp_is("18446744073709551616"), at(1e15)),
            (
                "exp float in the future",
                exp_is(&format!("{}.5", t + 60)),
                at((t + 60) as f64 + 0.5),
            ),
        ];
        let mut wrong = Vec::new();
        for (what, token, expected) in refused {
            match verifier.verify(&token) {
                Err(err) if err == expected => {
                    let shown = err.to_string();
                    if shown.contains(char::is_control) || shown.contains(&token) {
                        wrong.push(format!("{what}: Display {shown:?}"));
                    }
                }
                other => wrong.push(format!("{what}: {other:?}, expected {expected:?}")),
            }
        }
        for (what, token, expected) in accepted {
            match verifier.verify(&token) {
                Ok(grant) if grant.identity.expires_at == expected => {
                    // The session's deadline must not overflow.
                    assert!(grant.identity.closes_at() > grant.identity.expires_at);
                }
                other => wrong.push(format!("{what}: {other:?}, expected Ok({expected:?})")),
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
        assert_eq!(
            wrong_alg("HS256\nFORGED").to_string(),
            r"wrong algorithm HS256\nFORGED, expected HS256"
        );
    }

    /// `validity` at a fixed moment: each NumericDate form, the leeway's edges, what is not
    /// a NumericDate.
    #[test]
    fn validity_of_exp_and_nbf() {
        const NOW: u64 = 1_700_000_000;
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let at = |secs: f64| Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
        let hour = || at((NOW + 3600) as f64);
        let not_numeric = |claim| Err(AuthError::NotNumericDate(claim));
        let cases: Vec<(&str, Result<SystemTime, AuthError>)> = vec![
            (r#"{"exp": 1700003600}"#, hour()),
            (r#"{"exp": 1700003600.25}"#, at(1_700_003_600.25)),
            (r#"{"exp": 1.7000036e9}"#, hour()),
            (r#"{"exp": 1699999995}"#, at(1_699_999_995.0)),
            (r#"{"exp": 1699999994.5}"#, Err(AuthError::Expired)),
            (r#"{"exp": 1699999940}"#, Err(AuthError::Expired)),
            (r#"{"exp": 0}"#, Err(AuthError::Expired)),
            (r#"{"exp": -1}"#, Err(AuthError::Expired)),
            (r#"{"exp": -1e300}"#, Err(AuthError::Expired)),
            (r#"{"exp": 1e300}"#, at(1e15)),
            (r#"{"exp": 18446744073709551616}"#, at(1e15)),
            (r#"{"exp": 18446744073709551615}"#, at(1e15)),
            (r#"{}"#, Err(AuthError::MissingClaim("exp".to_owned()))),
            (r#"{"exp": "1700003600"}"#, not_numeric("exp")),
            (r#"{"exp": null}"#, not_numeric("exp")),
            (r#"{"exp": true}"#, not_numeric("exp")),
            (r#"{"exp": [1700003600]}"#, not_numeric("exp")),
            (r#"{"exp": {}}"#, not_numeric("exp")),
            (r#"{"exp": 1700003600, "nbf": 1700000000}"#, hour()),
            (r#"{"exp": 1700003600, "nbf": 1699999940}"#, hour()),
            (r#"{"exp": 1700003600, "nbf": 1.5e9}"#, hour()),
            (r#"{"exp": 1700003600, "nbf": -1}"#, hour()),
            (r#"{"exp": 1700003600, "nbf": -1e300}"#, hour()),
            (r#"{"exp": 1700003600, "nbf": 1700000005}"#, hour()),
            (
                r#"{"exp": 1700003600, "nbf": 1700000005.5}"#,
                Err(AuthError::NotYetValid),
            ),
            (
                r#"{"exp": 1700003600, "nbf": 1700000060}"#,
                Err(AuthError::NotYetValid),
            ),
            (
                r#"{"exp": 1700003600, "nbf": 1e300}"#,
                Err(AuthError::NotYetValid),
            ),
            (
                r#"{"exp": 1700003600, "nbf": 18446744073709551616}"#,
                Err(AuthError::NotYetValid),
            ),
            (
                r#"{"exp": 1700003600, "nbf": "1700000000"}"#,
                not_numeric("nbf"),
            ),
            (r#"{"exp": 1700003600, "nbf": null}"#, not_numeric("nbf")),
            (r#"{"exp": 1700003600, "nbf": false}"#, not_numeric("nbf")),
            (r#"{"exp": 1700003600, "nbf": [1]}"#, not_numeric("nbf")),
            // A bad `exp` is named before a bad `nbf`; an expired token before one not valid
            // yet.
            (r#"{"exp": "x", "nbf": "y"}"#, not_numeric("exp")),
            (r#"{"exp": 1, "nbf": 1e300}"#, Err(AuthError::Expired)),
        ];
        for (claims, expected) in cases {
            let claims: Map<String, Value> = serde_json::from_str(claims).unwrap();
            assert_eq!(validity(&claims, now), expected, "{claims:?}");
        }
    }

    #[test]
    fn without_a_configured_audience_any_aud_is_accepted() {
        let verifier = Verifier::hs256(SECRET);
        let token =
            hs256(json!({"sub": "a", "rooms": ["*"], "exp": now() + 60, "aud": "x", "iss": "y"}));
        assert!(verifier.admit(Some(&token), "lobby").is_ok());
    }

    #[test]
    fn key_files_that_are_not_public_keys() {
        assert_eq!(
            Verifier::from_public_key_pem(b"hello").unwrap_err(),
            KeyError::NotPem
        );
        assert_eq!(
            Verifier::from_public_key_pem(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .unwrap_err(),
            KeyError::Private
        );
        assert_eq!(
            Verifier::from_public_key_pem(
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
            )
            .unwrap_err(),
            KeyError::NotPem
        );
        assert_eq!(
            Verifier::from_public_key_pem(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
            .unwrap_err(),
            KeyError::NotPem
        );
    }

    /// A 1024-bit RSA public key (made with `openssl genpkey`), as SPKI and as PKCS#1.
    const RSA_1024_SPKI: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCb6kIsIuja/PzW1yBqyy1UPDqW
84iVzDbf1ArvrAwPHWzlzusApUPKraGiAgNW3iBelMlgQBo9x3Smty1TE8vd3hx4
aL+a62giunziPBCTWcsSkJGjc8rcsDKbl/YmZdHtnas4ef6rxgsS9onb05MByY0P
7+E1a6m7iVFOJXGibwIDAQAB
-----END PUBLIC KEY-----
";
    const RSA_1024_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIGJAoGBAJvqQiwi6Nr8/NbXIGrLLVQ8OpbziJXMNt/UCu+sDA8dbOXO6wClQ8qt
oaICA1beIF6UyWBAGj3HdKa3LVMTy93eHHhov5rraCK6fOI8EJNZyxKQkaNzytyw
MpuX9iZl0e2dqzh5/qvGCxL2idvTkwHJjQ/v4TVrqbuJUU4lcaJvAgMBAAE=
-----END RSA PUBLIC KEY-----
";

    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        for pem in [RSA_1024_SPKI, RSA_1024_PKCS1] {
            assert_eq!(
                Verifier::from_public_key_pem(pem.as_bytes()).unwrap_err(),
                KeyError::RsaTooShort(1024)
            );
        }
        // The walk through the DER: lengths in short and long form, and truncated input.
        assert_eq!(
            der_element(&[0x02, 0x01, 0x05, 0xff]),
            Some((0x02, &[0x05][..], &[0xff][..]))
        );
        assert_eq!(
            der_element(&[0x04, 0x81, 0x01, 0x07]),
            Some((0x04, &[0x07][..], &[][..]))
        );
        assert_eq!(der_element(&[0x04, 0x82, 0x01]), None);
        assert_eq!(der_element(&[0x04, 0x05, 0x00]), None);
        assert_eq!(rsa_modulus_bits("PUBLIC KEY", &[0x30, 0x00]), None);
    }

    #[test]
    fn from_config() {
        let path = Path::new("test.toml");
        assert!(Verifier::from_config(&AuthSettings::default(), path)
            .unwrap()
            .is_none());
        let auth = AuthSettings {
            jwt_secret: String::from_utf8(SECRET.to_vec()).unwrap(),
            ..AuthSettings::default()
        };
        let verifier = Verifier::from_config(&auth, path).unwrap().unwrap();
        assert_eq!(verifier.algorithm(), Algorithm::HS256);
        assert!(!format!("{verifier:?}").contains("0123456789"));
        let auth = AuthSettings {
            jwt_public_key_file: "/nonexistent/wsgrace/key.pem".to_owned(),
            ..AuthSettings::default()
        };
        let err = Verifier::from_config(&auth, path).unwrap_err();
        assert_eq!(err.key(), Some("auth.jwt_public_key_file"));
        assert!(
            err.to_string()
                .starts_with("test.toml: auth.jwt_public_key_file: cannot read"),
            "{err}"
        );
    }
}
