//! The `[auth]` table: signed tokens at the upgrade (an HS256 secret or a public key file,
//! and the issuer and audience a token must name), with its defaults, the environment
//! variable that overrides the secret, and the rules that need no file.
//!
//! It must not read the key file or verify a token: `crate::service::auth::Verifier::from_config`
//! does both. It must never show the secret: not in an error, not in `Debug`.

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// The environment variable that overrides `auth.jwt_secret`.
pub const JWT_SECRET_ENV: &str = "WSGRACE_JWT_SECRET";
/// The shortest `auth.jwt_secret`: 256 bits, as RFC 7518 §3.2 asks of an HS256 key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The `[auth]` table. Authentication is on when `jwt_secret` or `jwt_public_key_file` is
/// set; `crate::service::auth::Verifier::from_config` turns it into a token verifier (and reads the
/// key file).
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 secret, at least [`MIN_JWT_SECRET_BYTES`] bytes; [`JWT_SECRET_ENV`] overrides
    /// it in [`Config::load`](super::Config::load). Never logged, never shown in an error or
    /// in `Debug`.
    pub jwt_secret: String,
    /// PEM public key (RSA, EC P-256 or Ed25519) for RS256, ES256 or EdDSA tokens instead of
    /// a secret; the algorithm follows from the key.
    pub jwt_public_key_file: String,
    /// When set, a token's `iss` must be this.
    pub issuer: String,
    /// When set, a token's `aud` must be (or contain) this.
    pub audience: String,
}

impl AuthSettings {
    /// Whether upgrades need a token.
    pub fn enabled(&self) -> bool {
        !self.jwt_secret.is_empty() || !self.jwt_public_key_file.is_empty()
    }

    /// The `[auth]` rules that need no file: the key file itself is read and checked by
    /// `crate::service::auth::Verifier::from_config`. No message shows the secret.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if !self.jwt_secret.is_empty() && !self.jwt_public_key_file.is_empty() {
            return Err(check.invalid(
                "auth.jwt_secret",
                format!(
                    "set either auth.jwt_secret (or {JWT_SECRET_ENV}) for HS256 or \
                     auth.jwt_public_key_file for RS256/ES256/EdDSA, not both"
                ),
            ));
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(check.invalid(
                "auth.jwt_secret",
                format!(
                    "must be at least {MIN_JWT_SECRET_BYTES} bytes (e.g. `openssl rand -base64 \
                     32`), got {} (from the file or {JWT_SECRET_ENV})",
                    self.jwt_secret.len()
                ),
            ));
        }
        if !self.enabled() {
            for (key, value) in [
                ("auth.issuer", &self.issuer),
                ("auth.audience", &self.audience),
            ] {
                if !value.is_empty() {
                    return Err(check.invalid(
                        key,
                        "has no effect while authentication is off: set auth.jwt_secret (or \
                         WSGRACE_JWT_SECRET) or auth.jwt_public_key_file too"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never shown, not even in a test failure's `{config:?}`.
        let secret = match self.jwt_secret.len() {
            0 => "",
            _ => "<hidden>",
        };
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &secret)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{error, parse, SECRET};
    use crate::config::{Config, ConfigError};

    #[test]
    fn auth_is_off_by_default() {
        let config = Config::default();
        assert!(!config.auth.enabled());
        let config = parse(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).unwrap();
        assert!(config.auth.enabled());
        let config = parse("[auth]\njwt_public_key_file = \"/etc/wsgrace/jwt.pem\"\n").unwrap();
        assert!(config.auth.enabled());
        let config = parse(&format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nissuer = \"https://id.example\"\naudience = \"chat\"\n"
        ))
        .unwrap();
        assert_eq!(config.auth.issuer, "https://id.example");
        assert_eq!(config.auth.audience, "chat");
    }

    #[test]
    fn bad_auth_settings_name_their_key_and_never_the_secret() {
        let short = "short-secret-31-bytes-long-xxxxx";
        assert_eq!(short.len(), 32);
        let short = &short[..31];
        for (text, key) in [
            (
                format!("[auth]\njwt_secret = \"{short}\"\n"),
                "auth.jwt_secret",
            ),
            (
                format!("[auth]\njwt_secret = \"{SECRET}\"\njwt_public_key_file = \"k.pem\"\n"),
                "auth.jwt_secret",
            ),
            ("[auth]\nissuer = \"me\"\n".to_owned(), "auth.issuer"),
            ("[auth]\naudience = \"chat\"\n".to_owned(), "auth.audience"),
        ] {
            let err = error(&text);
            assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
            assert_eq!(err.key(), Some(key), "{text:?}");
            let shown = err.to_string();
            assert!(!shown.contains(short) && !shown.contains(SECRET), "{shown}");
            assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        }
        let shown = error(&format!("[auth]\njwt_secret = \"{short}\"\n")).to_string();
        assert!(shown.contains("at least 32 bytes"), "{shown}");
        assert!(shown.contains("got 31"), "{shown}");
        assert_eq!(
            error("[auth]\njwt_secret = 5\n").key(),
            Some("auth.jwt_secret")
        );
        assert_eq!(error("[auth]\nsecret = \"x\"\n").key(), Some("auth.secret"));
    }

    #[test]
    fn the_secret_is_hidden_from_debug() {
        let config = parse(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }
}
