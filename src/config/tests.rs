//! The unit tests of the whole configuration: the shipped `config.toml` against the
//! defaults, loading (missing file, syntax errors, the environment's overrides), and the
//! tables of config errors that name their key. Tests of one table's own rules live in that
//! table's file and borrow the helpers here ([`parse`], [`error`], [`SECRET`]).

use super::*;

const SHIPPED: &str = include_str!("../../config.toml");

/// `text` parsed and validated as if it were the file `test.toml`.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

/// The error `text` must give; panics if it parses.
pub(super) fn error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
        Err(err) => err,
    }
}

#[test]
fn shipped_config_is_the_defaults() {
    assert_eq!(parse(SHIPPED).unwrap(), Config::default());
}

#[test]
fn shipped_config_names_every_key() {
    // The shipped file documents every key: each default-valued key appears uncommented.
    let table: toml::Table = SHIPPED.parse().unwrap();
    let keys = |name: &str| -> Vec<String> {
        let mut keys: Vec<String> = table[name].as_table().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys("server"),
        [
            "allowed_origins",
            "bind",
            "max_connections",
            "max_connections_per_ip",
            "request_timeout_ms",
            "trusted_proxies",
            "workers"
        ]
    );
    assert_eq!(
        keys("session"),
        [
            "client_timeout_ms",
            "heartbeat_interval_ms",
            "max_frame_bytes",
            "max_messages_per_sec",
            "max_rooms",
            "outbound_queue",
            "permessage_deflate",
            "send_buffer_bytes",
            "tcp_nodelay"
        ]
    );
    assert_eq!(
        keys("close"),
        [
            "linger_bytes",
            "linger_ms",
            "mode",
            "room_modes",
            "timeout_ms"
        ]
    );
    assert_eq!(
        keys("shutdown"),
        [
            "batch_interval_ms",
            "batch_size",
            "code",
            "drain_timeout_ms",
            "reason",
            "reconnect_spread_ms"
        ]
    );
    assert_eq!(
        keys("broker"),
        ["key_prefix", "kind", "redis_url", "wait_replicas"]
    );
    assert_eq!(
        keys("history"),
        ["max_bytes", "size", "snapshot_path", "ttl_ms"]
    );
    assert_eq!(keys("publish"), ["dedupe_ms"]);
    assert_eq!(
        keys("presence"),
        [
            "enabled",
            "events",
            "events_max_members",
            "grace_ms",
            "ttl_ms"
        ]
    );
    assert_eq!(keys("api"), ["bind", "key"]);
    assert_eq!(
        keys("auth"),
        ["audience", "issuer", "jwt_public_key_file", "jwt_secret"]
    );
    let mut tables: Vec<&String> = table.keys().collect();
    tables.sort();
    assert_eq!(
        tables,
        [
            "api", "auth", "broker", "close", "history", "presence", "publish", "server",
            "session", "shutdown"
        ],
        "a table of config.toml the test does not check"
    );
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    assert_eq!(
        parse("[server]\n[session]\n[close]\n[shutdown]\n[broker]\n[history]\n[auth]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn defaults_are_valid() {
    Config::default().validate(Path::new("x")).unwrap();
}

#[test]
fn missing_keys_keep_their_defaults() {
    let config = parse("[session]\nmax_frame_bytes = 1024\n").unwrap();
    assert_eq!(config.session.max_frame_bytes, 1024);
    assert_eq!(config.session.heartbeat_interval_ms, 5_000);
    assert_eq!(config.server, ServerConfig::default());
}

#[test]
fn room_override() {
    let config =
        parse("[close]\nmode = \"awaited\"\n[close.room_modes]\nlobby = \"fire_and_forget\"\n")
            .unwrap();
    assert_eq!(config.mode_for_room("lobby"), CloseMode::FireAndForget);
    assert_eq!(config.mode_for_room("other"), CloseMode::Awaited);

    let config =
        parse("[close]\nmode = \"fire_and_forget\"\nroom_modes = { ops = \"awaited\" }").unwrap();
    assert_eq!(config.mode_for_room("ops"), CloseMode::Awaited);
    assert_eq!(config.mode_for_room("lobby"), CloseMode::FireAndForget);
}

#[test]
fn missing_file_names_the_file() {
    let path = Path::new("/nonexistent/wsgrace/config.toml");
    let err = Config::load(path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(err.path(), path);
    assert_eq!(err.key(), None);
    assert!(err
        .to_string()
        .starts_with("/nonexistent/wsgrace/config.toml: "));
}

#[test]
fn syntax_error_has_line_and_column() {
    let err = error("[session]\nheartbeat_interval_ms = = 3\n");
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                line: 2,
                column: 25,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.key(), None);
    let text = err.to_string();
    assert!(
        text.starts_with("test.toml: line 2, column 25: invalid TOML: "),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");

    let err = error("[session\n");
    assert!(
        matches!(err, ConfigError::Syntax { line: 1, .. }),
        "{err:?}"
    );
    let err = error("[session]\nheartbeat_interval_ms = 1\nheartbeat_interval_ms = 2\n");
    assert!(
        matches!(err, ConfigError::Syntax { line: 3, .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_keys_name_their_full_path() {
    for (text, key) in [
        ("[session]\nbogus = 1\n", "session.bogus"),
        ("bogus = 1\n", "bogus"),
        ("[bogus]\n", "bogus"),
        ("[close]\nroom_mode = {}\n", "close.room_mode"),
        ("[server]\nport = 80\n", "server.port"),
    ] {
        let err = error(text);
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
        assert_eq!(err.key(), Some(key), "{text:?}");
        assert!(err
            .to_string()
            .starts_with(&format!("test.toml: {key}: unknown key")));
    }
    let text = error("[session]\nbogus = 1\n").to_string();
    assert!(
        text.contains("expected one of `heartbeat_interval_ms`"),
        "{text}"
    );
}

#[test]
fn wrong_types_name_their_key() {
    for (text, key) in [
        ("[close]\nmode = \"sometimes\"\n", "close.mode"),
        (
            "[close.room_modes]\nlobby = \"sometimes\"\n",
            "close.room_modes.lobby",
        ),
        (
            "[session]\nmax_frame_bytes = \"big\"\n",
            "session.max_frame_bytes",
        ),
        ("[session]\noutbound_queue = -1\n", "session.outbound_queue"),
        ("[shutdown]\ncode = 70000\n", "shutdown.code"),
        (
            "[server]\nallowed_origins = [\"a\", 3]\n",
            "server.allowed_origins[1]",
        ),
        ("session = 3\n", "session"),
    ] {
        let err = error(text);
        assert!(matches!(err, ConfigError::WrongType { .. }), "{err:?}");
        assert_eq!(err.key(), Some(key), "{text:?}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("test.toml: {key}: ")), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }
    let shown = error("session = 3\n").to_string();
    assert!(shown.ends_with("expected a table"), "{shown}");
}

#[test]
fn out_of_range_values_name_their_key() {
    for (text, key) in [
        ("[server]\nbind = \"localhost\"\n", "server.bind"),
        ("[server]\nbind = \"127.0.0.1\"\n", "server.bind"),
        ("[server]\nworkers = 1025\n", "server.workers"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nallowed_origins = [\"https://a.example\", \"\"]\n",
            "server.allowed_origins[1]",
        ),
        (
            "[server]\nallowed_origins = [\"https://a.example/\"]\n",
            "server.allowed_origins[0]",
        ),
        (
            "[session]\nheartbeat_interval_ms = 9\n",
            "session.heartbeat_interval_ms",
        ),
        (
            "[session]\nclient_timeout_ms = 86400001\n",
            "session.client_timeout_ms",
        ),
        (
            "[session]\nclient_timeout_ms = 5000\n",
            "session.client_timeout_ms",
        ),
        (
            "[session]\nmax_frame_bytes = 0\n",
            "session.max_frame_bytes",
        ),
        (
            "[session]\nmax_frame_bytes = 67108865\n",
            "session.max_frame_bytes",
        ),
        ("[session]\noutbound_queue = 0\n", "session.outbound_queue"),
        ("[close]\ntimeout_ms = 0\n", "close.timeout_ms"),
        (
            "[session]\nsend_buffer_bytes = 4095\n",
            "session.send_buffer_bytes",
        ),
        ("[close]\nlinger_ms = 60001\n", "close.linger_ms"),
        (
            "[close.room_modes]\n\"no spaces\" = \"awaited\"\n",
            "close.room_modes.no spaces",
        ),
        (
            "[close.room_modes]\n\"\" = \"awaited\"\n",
            "close.room_modes.",
        ),
        ("[shutdown]\ncode = 1005\n", "shutdown.code"),
        ("[shutdown]\ncode = 999\n", "shutdown.code"),
        (
            "[shutdown]\ndrain_timeout_ms = 0\n",
            "shutdown.drain_timeout_ms",
        ),
        (
            "[shutdown]\nbatch_interval_ms = 600001\n",
            "shutdown.batch_interval_ms",
        ),
        (
            "[shutdown]\nreconnect_spread_ms = 600001\n",
            "shutdown.reconnect_spread_ms",
        ),
    ] {
        let err = error(text);
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
        assert_eq!(err.key(), Some(key), "{text:?}");
    }
    assert_eq!(
        error("[session]\nmax_frame_bytes = 0\n").to_string(),
        "test.toml: session.max_frame_bytes: must be between 125 and 67108864, got 0"
    );
    assert_eq!(
        error("[session]\nsend_buffer_bytes = 5\n").to_string(),
        "test.toml: session.send_buffer_bytes: must be 0 (the kernel's default) or between \
         4096 and 67108864, got 5"
    );
}

#[test]
fn bounds_are_inclusive() {
    let config = parse(
        "[server]\nworkers = 1024\nmax_connections = 1\n\
         [session]\nheartbeat_interval_ms = 10\nclient_timeout_ms = 11\n\
         max_frame_bytes = 125\noutbound_queue = 1\n\
         [close]\ntimeout_ms = 1\n\
         [shutdown]\ncode = 4999\ndrain_timeout_ms = 1\nbatch_interval_ms = 600000\n",
    );
    assert!(config.is_ok(), "{config:?}");
}

#[test]
fn broker_and_history_defaults() {
    let config = Config::default();
    assert_eq!(config.broker.kind, BrokerKind::Local);
    assert_eq!(config.broker.redis_url, "");
    assert_eq!(config.broker.key_prefix, "wsgrace");
    assert_eq!(config.history.size, 1_000);
    assert_eq!(config.history.ttl_ms, 3_600_000);
    assert_eq!(config.history.max_bytes, 268_435_456);
}

#[test]
fn redis_broker_settings() {
    let config =
        parse("[broker]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n").unwrap();
    assert_eq!(config.broker.kind, BrokerKind::Redis);
    let config = parse("[broker]\nwait_replicas = 16\n").unwrap();
    assert_eq!(config.broker.wait_replicas, 16);
    let err = parse("[broker]\nwait_replicas = 17\n").unwrap_err();
    assert_eq!(err.key(), Some("broker.wait_replicas"));
    assert_eq!(parse("").unwrap().broker.wait_replicas, 0);
    let sentinel = "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/0";
    let config = parse(&format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{sentinel}\"\n"
    ))
    .unwrap();
    assert_eq!(config.broker.redis_url, sentinel);
    let err = parse("[broker]\nredis_url = \"redis+sentinel://:hunter2@h:1/\"\n").unwrap_err();
    assert_eq!(err.key(), Some("broker.redis_url"));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let config = parse("[broker]\nredis_url = \"rediss://u:p@cache.example:6380/1\"\n");
    if cfg!(feature = "redis-tls") {
        assert!(config.is_ok(), "{config:?}");
    } else {
        let err = config.unwrap_err();
        assert_eq!(err.key(), Some("broker.redis_url"));
        assert!(err.to_string().contains("redis-tls"), "{err}");
        assert!(!err.to_string().contains(":p@"), "{err}");
    }
    let config = parse("[history]\nsize = 0\n").unwrap();
    assert_eq!(config.history.size, 0);
}

#[test]
fn bad_broker_settings_name_their_key() {
    for (text, key) in [
        ("[broker]\nkind = \"redis\"\n", "broker.redis_url"),
        (
            "[broker]\nredis_url = \"http://127.0.0.1:6379\"\n",
            "broker.redis_url",
        ),
        (
            "[broker]\nredis_url = \"127.0.0.1:6379\"\n",
            "broker.redis_url",
        ),
        ("[broker]\nredis_url = \"redis://\"\n", "broker.redis_url"),
        (
            "[broker]\nredis_url = \"redis://:6379\"\n",
            "broker.redis_url",
        ),
        ("[broker]\nkey_prefix = \"\"\n", "broker.key_prefix"),
        ("[broker]\nkey_prefix = \"a b\"\n", "broker.key_prefix"),
        ("[history]\nttl_ms = 0\n", "history.ttl_ms"),
        ("[history]\nsize = 1000001\n", "history.size"),
        (
            "[history]\nmax_bytes = 1099511627777\n",
            "history.max_bytes",
        ),
        ("[session]\nmax_rooms = 0\n", "session.max_rooms"),
        ("[publish]\ndedupe_ms = 86400001\n", "publish.dedupe_ms"),
    ] {
        let err = error(text);
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
        assert_eq!(err.key(), Some(key), "{text:?}");
    }
    for (text, key) in [
        ("[broker]\nkind = \"memcached\"\n", "broker.kind"),
        ("[broker]\nurl = \"redis://x\"\n", "broker.url"),
        ("[history]\nsize = -1\n", "history.size"),
    ] {
        let err = error(text);
        assert_eq!(err.key(), Some(key), "{text:?}");
    }
    let shown = error("[broker]\nkind = \"redis\"\n").to_string();
    assert!(shown.contains("WSGRACE_REDIS_URL"), "{shown}");
}

#[test]
fn the_environment_overrides_the_redis_url() {
    let dir = std::env::temp_dir().join(format!("wsgrace-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, "[broker]\nkind = \"redis\"\n").unwrap();

    let env = |url: &'static str| move |name: &str| (name == REDIS_URL_ENV).then(|| url.to_owned());
    let config = Config::load_with_env(&path, env("redis://10.0.0.1:6379/2")).unwrap();
    assert_eq!(config.broker.redis_url, "redis://10.0.0.1:6379/2");

    // An empty variable is no override: the file's (missing) URL is an error.
    let err = Config::load_with_env(&path, env("")).unwrap_err();
    assert_eq!(err.key(), Some("broker.redis_url"));

    // A bad URL from the environment is named by the key it overrides.
    let err = Config::load_with_env(&path, env("tcp://x:secret@h")).unwrap_err();
    assert_eq!(err.key(), Some("broker.redis_url"));
    assert!(!err.to_string().contains("secret"), "{err}");

    std::fs::write(&path, "[broker]\nredis_url = \"redis://file:6379\"\n").unwrap();
    let config = Config::load_with_env(&path, env("redis://env:6379")).unwrap();
    assert_eq!(config.broker.redis_url, "redis://env:6379");
    let config = Config::load_with_env(&path, |_| None).unwrap();
    assert_eq!(config.broker.redis_url, "redis://file:6379");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A valid HS256 secret: exactly the shortest allowed, 32 bytes.
pub(super) const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn the_environment_overrides_the_jwt_secret() {
    let mut config = parse("").unwrap();
    config.apply_env(|name| (name == JWT_SECRET_ENV).then(|| SECRET.to_owned()));
    assert_eq!(config.auth.jwt_secret, SECRET);
    config.validate(Path::new("x")).unwrap();

    let mut config = parse(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).unwrap();
    config.apply_env(|name| (name == JWT_SECRET_ENV).then(String::new));
    assert_eq!(
        config.auth.jwt_secret, SECRET,
        "an empty variable is no override"
    );

    let mut config = parse("").unwrap();
    config.apply_env(|name| (name == JWT_SECRET_ENV).then(|| "too short".to_owned()));
    let err = config.validate(Path::new("x")).unwrap_err();
    assert_eq!(err.key(), Some("auth.jwt_secret"));
    assert!(err.to_string().contains(JWT_SECRET_ENV), "{err}");
    assert!(!err.to_string().contains("too short"), "{err}");
}

#[test]
fn the_api_needs_a_key_of_16_bytes_that_is_never_shown() {
    let config = parse("").unwrap();
    assert!(!config.api.enabled());
    let err = parse("[api]\nbind = \"127.0.0.1:0\"\n").unwrap_err();
    assert_eq!(err.key(), Some("api.key"));
    assert!(err.to_string().contains(API_KEY_ENV), "{err}");
    let err = parse("[api]\nbind = \"127.0.0.1:0\"\nkey = \"fifteen-bytes!!\"\n").unwrap_err();
    assert_eq!(err.key(), Some("api.key"));
    assert!(!err.to_string().contains("fifteen"), "{err}");
    let err = parse("[api]\nbind = \"localhost\"\nkey = \"sixteen-bytes!!!\"\n").unwrap_err();
    assert_eq!(err.key(), Some("api.bind"));
    let config = parse("[api]\nbind = \"127.0.0.1:0\"\nkey = \"sixteen-bytes!!!\"\n").unwrap();
    assert!(config.api.enabled());
    assert!(!format!("{config:?}").contains("sixteen"));

    // The environment's key replaces the file's; an empty variable does not.
    let mut config = parse("[api]\nbind = \"127.0.0.1:0\"\nkey = \"sixteen-bytes!!!\"\n").unwrap();
    config.apply_env(|name| (name == API_KEY_ENV).then(|| "from-the-environment".to_owned()));
    assert_eq!(config.api.key, "from-the-environment");
    config.apply_env(|name| (name == API_KEY_ENV).then(String::new));
    assert_eq!(config.api.key, "from-the-environment");
}
