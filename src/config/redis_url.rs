//! The form of a broker URL (`redis://` or `rediss://`, then a host) and its redaction for
//! logs and errors. `broker.redis_url` is checked with [`check_redis_url`]; the Redis broker
//! logs its URL only through [`redact_url`].
//!
//! Pure string functions: they must not connect, resolve a host or log, and no message they
//! return may contain the URL's password.

/// Whether `url` has the form of a broker URL: `redis://` or `rediss://`, then a host.
/// The error is the rule that was broken (without the URL, which may hold a password).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| "must start with redis:// or rediss://".to_owned())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() || host.starts_with(':') {
        return Err("must name a host, as in redis://host:port/db".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".to_owned());
    }
    Ok(())
}

/// `url` with the password (if any) replaced by `***`, for logs and error messages:
/// `redis://user:secret@host/0` → `redis://user:***@host/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host`: redis-rs reads a lone userinfo as the password.
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        for (url, shown) in [
            ("redis://host:6379/0", "redis://host:6379/0"),
            (
                "redis://user:pw@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("redis://:pw@host", "redis://:***@host"),
            ("redis://pw@host", "redis://***@host"),
            ("rediss://u:p@ss@host/1?x=y", "rediss://u:***@host/1?x=y"),
            ("no scheme", "no scheme"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
