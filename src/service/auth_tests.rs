//! Tests of the token check: table tests of tokens the verifier accepts and refuses (every
//! refusal's status, the RFCs' invalid tokens), of `exp`/`nbf` as NumericDates, of the room
//! grants, and of the key-file checks.

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
