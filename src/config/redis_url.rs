//! The form of a broker URL (`redis://` or `rediss://`, then a host;
//! `redis+sentinel://[:password@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`; or
//! `redis+cluster://[:password@]HOST:PORT[,HOST:PORT...]`) and its redaction
//! for logs and errors. `broker.redis_url` is checked with [`check_redis_url`]; the Redis broker
//! logs its URL only through [`redact_url`].
//!
//! Pure string functions: they must not connect, resolve a host or log, and no message they
//! return may contain the URL's password.

/// The scheme of a Sentinel broker URL.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// The scheme of a Redis Cluster broker URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Whether `url` has the form of a broker URL: `redis://` or `rediss://`, then a host; or
/// a Sentinel URL (`redis+sentinel://`, see [`parse_sentinel_url`]); or a Redis Cluster URL
/// (`redis+cluster://`, see [`parse_cluster_url`]). The error is the rule that was broken
/// (without the URL, which may hold a password).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".to_owned());
    }
    if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
        return check_sentinel_url(rest);
    }
    if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        return parse_cluster_url(rest).map(|_| ());
    }
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| {
            "must start with redis://, rediss://, redis+sentinel:// or redis+cluster://".to_owned()
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() || host.starts_with(':') {
        return Err("must name a host, as in redis://host:port/db".to_owned());
    }
    Ok(())
}

/// The parts of a Sentinel URL: the sentinels, the master's name, the db and the password
/// (for the master and its replicas; the sentinels are asked without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `(host, port)` of every sentinel, in the URL's order.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// The database number (0 when not given).
    pub db: i64,
    /// The master's password, percent-decoded, if any.
    pub password: Option<String>,
}

/// The rule `rest` (a Sentinel URL after `redis+sentinel://`) breaks, if any.
fn check_sentinel_url(rest: &str) -> Result<(), String> {
    parse_sentinel_url(rest).map(|_| ())
}

/// `rest` (a Sentinel URL after `redis+sentinel://`) → its parts, or the rule it breaks
/// (never quoting the password).
pub fn parse_sentinel_url(rest: &str) -> Result<SentinelUrl, String> {
    const FORM: &str =
        "must be redis+sentinel://[:password@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]";
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("{FORM} (no master name)"))?;
    let (password, hosts) = split_password(authority, FORM)?;
    let sentinels = parse_hosts(hosts, FORM, "sentinel")?;
    let mut parts = path.split('/');
    let master = parts.next().unwrap_or_default();
    if master.is_empty() || master.contains(['?', '#']) {
        return Err(format!("{FORM} (no master name)"));
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| format!("{FORM} (DB must be a number)"))?,
    };
    if parts.next().is_some() {
        return Err(format!("{FORM} (nothing may follow the DB)"));
    }
    Ok(SentinelUrl {
        sentinels,
        master: master.to_owned(),
        db,
        password,
    })
}

/// The parts of a Redis Cluster URL: the nodes to ask for the cluster's layout first, and
/// the password of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `(host, port)` of every node named, in the URL's order.
    pub nodes: Vec<(String, u16)>,
    /// The nodes' password, percent-decoded, if any.
    pub password: Option<String>,
}

/// `rest` (a Redis Cluster URL after `redis+cluster://`) → its parts, or the rule it breaks
/// (never quoting the password). A cluster has no databases: nothing may follow the hosts.
pub fn parse_cluster_url(rest: &str) -> Result<ClusterUrl, String> {
    const FORM: &str = "must be redis+cluster://[:password@]HOST:PORT[,HOST:PORT...]";
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        let (_, after) = authority.rsplit_once('@').unwrap_or(("", authority));
        if after.contains(['/', '?', '#']) {
            return Err(format!("{FORM} (nothing may follow the hosts)"));
        }
    }
    let (password, hosts) = split_password(authority, FORM)?;
    let nodes = parse_hosts(hosts, FORM, "node")?;
    Ok(ClusterUrl { nodes, password })
}

/// `[:password@]HOSTS` → the password (percent-decoded; the user, if any, is ignored) and
/// the hosts.
fn split_password<'a>(authority: &'a str, form: &str) -> Result<(Option<String>, &'a str), String> {
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            // `:password` (the user, if any, is ignored: these setups use `default`).
            let password = userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw);
            let decoded = percent_decode(password)
                .ok_or_else(|| format!("{form} (the password is not valid percent-encoding)"))?;
            Ok((Some(decoded).filter(|pw| !pw.is_empty()), hosts))
        }
        None => Ok((None, authority)),
    }
}

/// `HOST:PORT[,HOST:PORT...]` → the hosts and ports (`what`: "sentinel" or "node", for the
/// error).
fn parse_hosts(hosts: &str, form: &str, what: &str) -> Result<Vec<(String, u16)>, String> {
    let mut parsed = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| format!("{form} (every {what} needs HOST:PORT)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("{form} (a {what}'s port is not a port number)"))?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() || name.contains(['?', '#', '@', '/']) {
            return Err(format!("{form} (a {what} has no host)"));
        }
        parsed.push((name.to_owned(), port));
    }
    Ok(parsed)
}

/// `%XX` sequences decoded; `None` for a broken one or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with the password (if any) replaced by `***`, for logs and error messages:
/// `redis://user:secret@host/0` → `redis://user:***@host/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@` ends the userinfo even when the password holds a `/` (a malformed URL
    // must not show half a password either).
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) if !user.contains(['/', '?', '#']) => format!("{user}:***"),
        Some(_) => ":***".to_owned(),
        // `redis://secret@host`: redis-rs reads a lone userinfo as the password.
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{host}")
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
            (
                "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2",
                "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26379/mymaster/2",
            ),
            (
                "redis+sentinel://:pa/ss@h:1/m",
                "redis+sentinel://:***@h:1/m",
            ),
            (
                "redis+sentinel://h:26379/mymaster",
                "redis+sentinel://h:26379/mymaster",
            ),
            (
                "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001",
                "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:7001",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn sentinel_urls() {
        let url = parse_sentinel_url(":p%40ss@a:26379,[::1]:26380/mymaster/3").unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                sentinels: vec![("a".to_owned(), 26379), ("::1".to_owned(), 26380)],
                master: "mymaster".to_owned(),
                db: 3,
                password: Some("p@ss".to_owned()),
            }
        );
        let plain = parse_sentinel_url("a:1/m").unwrap();
        assert_eq!((plain.db, plain.password), (0, None));
        for good in [
            "redis+sentinel://a:26379/m",
            "redis+sentinel://:pw@a:1,b:2,c:3/m/0",
        ] {
            assert_eq!(check_redis_url(good), Ok(()), "{good}");
        }
        for bad in [
            "redis+sentinel://",
            "redis+sentinel://a:26379",
            "redis+sentinel://a:26379/",
            "redis+sentinel://a/m",
            "redis+sentinel://a:0/m",
            "redis+sentinel://a:x/m",
            "redis+sentinel://:26379/m",
            "redis+sentinel://a:1,/m",
            "redis+sentinel://a:1/m/x",
            "redis+sentinel://a:1/m/1/2",
            "redis+sentinel://:hunter2@a:1/m/x",
            "redis+sentinel://:hun%zzter2@a:1/m",
            "redis+sentinel://a:1/m w",
        ] {
            let err = check_redis_url(bad).unwrap_err();
            assert!(!err.contains("hunter2") && !err.contains("hun%"), "{err}");
        }
    }

    #[test]
    fn cluster_urls() {
        let url = parse_cluster_url(":p%40ss@a:7000,[::1]:7001").unwrap();
        assert_eq!(
            url,
            ClusterUrl {
                nodes: vec![("a".to_owned(), 7000), ("::1".to_owned(), 7001)],
                password: Some("p@ss".to_owned()),
            }
        );
        assert_eq!(parse_cluster_url("a:1/").unwrap().password, None);
        for good in ["redis+cluster://a:7000", "redis+cluster://:pw@a:1,b:2,c:3"] {
            assert_eq!(check_redis_url(good), Ok(()), "{good}");
        }
        for bad in [
            "redis+cluster://",
            "redis+cluster://a",
            "redis+cluster://a:0",
            "redis+cluster://a:x",
            "redis+cluster://:7000",
            "redis+cluster://a:1,",
            "redis+cluster://a:1/0",
            "redis+cluster://a:1?x=y",
            "redis+cluster://:hunter2@a:1/2",
            "redis+cluster://:hun%zzter2@a:1",
        ] {
            let err = check_redis_url(bad).unwrap_err();
            assert!(
                err.starts_with("must be redis+cluster://")
                    && !err.contains("hunter2")
                    && !err.contains("hun%"),
                "{bad}: {err}"
            );
        }
    }
}
