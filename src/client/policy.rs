//! The reconnect policy of the Rust client, pure: how long to wait before the next attempt
//! (full-jitter backoff) and, for the end of each underlying socket (or a refused upgrade),
//! whether to stop or to reconnect, after how long and with a fresh token. [`next_step`] is
//! the table in the header of [`crate::client`] (the one of `web/wsgrace.js`, plus the rows
//! for a refused upgrade's HTTP status, which a browser cannot read), row by row. Both
//! clients, [`Client`](super::Client) (v1) and [`RoomsClient`](super::RoomsClient)
//! (`wsgrace.v2`), follow it.
//!
//! It owns plain types and functions. It must not do I/O, sleep, read a clock or draw a
//! random number (the shell passes one in), and must not know tokio or tungstenite: the
//! shell feeds it how a socket ended and carries out the [`Step`] it returns, so every row
//! of the table is a unit test below.

use std::fmt;
use std::time::Duration;

/// Full-jitter exponential backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay (500 ms).
    pub base: Duration,
    /// No delay reaches this (10 s).
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(10),
        }
    }
}

/// Full-jitter exponential backoff: a delay in `[0, min(cap, base · 2^attempt))`, whole
/// milliseconds. `random` is a number in `[0, 1)` (clamped; NaN counts as 0).
pub fn backoff_delay(attempt: u32, backoff: Backoff, random: f64) -> Duration {
    let base = backoff.base.as_millis() as f64;
    let cap = backoff.cap.as_millis() as f64;
    // 2^attempt is infinite for large attempts, and min() then gives the cap.
    let ceiling = cap.min(base * 2f64.powf(f64::from(attempt))).max(0.0);
    let r = if random.is_nan() {
        0.0
    } else {
        random.clamp(0.0, 1.0)
    };
    let ms = (r * ceiling).floor().min((ceiling - 1.0).max(0.0));
    Duration::from_millis(ms as u64)
}

/// Close codes after which the client reconnects with backoff (absent a `going_away`).
pub const RETRY_CODES: [u16; 7] = [1001, 1005, 1006, 1011, 1012, 1013, 1014];
/// The close code wsgrace sends when a session's token expires.
pub const TOKEN_EXPIRED: u16 = 3000;
/// Close codes that say the server refused what this client sends.
pub const REFUSED_CODES: [u16; 6] = [1002, 1003, 1007, 1008, 1009, 1010];

/// How one underlying socket ended (or the attempt to open one failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The server's close code; 1005 for a close frame without one, 1006 when no close
    /// frame came (network drop, refused upgrade, handshake timeout).
    pub code: u16,
    /// The close frame's reason; for a refused upgrade `HTTP <status>`, followed by
    /// `: <the first line of the answer's body>` when it has one.
    pub reason: String,
    /// A close frame came from the server.
    pub clean: bool,
    /// The HTTP status of a refused upgrade (the server answered, but not with 101);
    /// `None` for every other end.
    pub http_status: Option<u16>,
}

impl CloseInfo {
    /// An end without a close frame (1006).
    pub fn abnormal(reason: impl Into<String>) -> CloseInfo {
        CloseInfo {
            code: 1006,
            reason: reason.into(),
            clean: false,
            http_status: None,
        }
    }

    /// An upgrade refused with `status`; the reason is `HTTP <status>` and the first line of
    /// `body` (wsgrace says why in one line: `room not granted`, `draining`, ...), at most
    /// [`MAX_CLOSE_REASON`](super::MAX_CLOSE_REASON) bytes of it.
    pub fn refused(status: u16, body: Option<&[u8]>) -> CloseInfo {
        let text = body.map(String::from_utf8_lossy).unwrap_or_default();
        let line = text.lines().next().unwrap_or_default().trim();
        let mut cut = line.len().min(super::MAX_CLOSE_REASON);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let line = &line[..cut];
        let reason = if line.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {line}")
        };
        CloseInfo {
            code: 1006,
            reason,
            clean: false,
            http_status: Some(status),
        }
    }
}

/// What [`next_step`] knows besides the close itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// The app called [`Client::close`](super::Client::close) (or dropped the client).
    pub app_closed: bool,
    /// The `reconnect_after_ms` of a `going_away` received on this socket.
    pub going_away: Option<Duration>,
    /// This socket got a welcome.
    pub welcomed: bool,
    /// Reconnects since the last welcome, before this one.
    pub attempt: u32,
    /// A token hook exists.
    pub can_refresh_token: bool,
    /// An HTTP 401 already made the client ask the token hook since the last welcome (v2:
    /// hello): another 401 stops (the hook is asked once, as `/wsgrace.js` asks `getToken`).
    pub asked_token_after_401: bool,
    pub backoff: Backoff,
    /// A number in `[0, 1)` for the jitter.
    pub random: f64,
}

/// Why the client stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The app called [`Client::close`](super::Client::close).
    AppClosed,
    /// Close 3000 and no token hook to get a fresh token.
    TokenExpiredWithoutHook,
    /// Close 1000.
    NormalClosure,
    /// 1002, 1003, 1007, 1008, 1009, 1010: the server refused what this client sends.
    Refused(u16),
    /// Any other code (1015, 3001–4999, ...), or a URL that cannot be connected to (0).
    Other(u16),
    /// The upgrade was refused with this HTTP status: 400 (a bad name, room or query: a
    /// retry would repeat it), 403 (the token does not grant the room), or 401 when there is
    /// no token hook or its fresh token was refused too.
    UpgradeRefused(u16),
}

/// Why the client reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// The server sent `going_away` before its close.
    GoingAway,
    /// Close 3000: a fresh token from the hook.
    TokenExpired,
    /// A retryable close code ([`RETRY_CODES`]).
    Retry(u16),
    /// The token hook failed before a socket was opened.
    TokenHookFailed,
    /// The upgrade was refused with HTTP 401: a fresh token from the hook (once since the
    /// last welcome), and at once.
    Unauthorized,
    /// The upgrade was refused with this HTTP status, e.g. 429 (too many connections from
    /// this address) or 503 (draining, broker unreachable): back off and retry.
    HttpStatus(u16),
}

/// The reconnect decision for the end of one underlying socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No more reconnects: state Closed.
    Stop(StopReason),
    /// Connect again after `delay`; `fresh_token`: ask the hook first; `attempt`: the
    /// counter from now on.
    Reconnect {
        delay: Duration,
        fresh_token: bool,
        attempt: u32,
        why: ReconnectReason,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Stop(StopReason::AppClosed) => write!(f, "stop: closed by the app"),
            Step::Stop(StopReason::TokenExpiredWithoutHook) => {
                write!(f, "stop: token expired and no token hook")
            }
            Step::Stop(StopReason::NormalClosure) => write!(f, "stop: normal closure"),
            Step::Stop(StopReason::Refused(code)) => {
                write!(
                    f,
                    "stop: close {code}: the server refused what this client sends"
                )
            }
            Step::Stop(StopReason::Other(code)) => write!(f, "stop: close {code}"),
            Step::Stop(StopReason::UpgradeRefused(status)) => {
                write!(f, "stop: the upgrade was refused with HTTP {status}")
            }
            Step::Reconnect { delay, why, .. } => {
                let why = match why {
                    ReconnectReason::GoingAway => "going_away".to_owned(),
                    ReconnectReason::TokenExpired => "token expired".to_owned(),
                    ReconnectReason::Retry(code) => format!("close {code}"),
                    ReconnectReason::TokenHookFailed => "token hook failed".to_owned(),
                    ReconnectReason::Unauthorized => "HTTP 401: a fresh token".to_owned(),
                    ReconnectReason::HttpStatus(status) => format!("HTTP {status}"),
                };
                write!(f, "reconnect in {} ms ({why})", delay.as_millis())
            }
        }
    }
}

/// The reconnect decision for the close of one underlying socket. Pure: the table in the
/// header of [`crate::client`], row by row.
pub fn next_step(close: &CloseInfo, ctx: &StepContext) -> Step {
    let code = close.code;
    let attempt = if ctx.welcomed { 0 } else { ctx.attempt };
    let reconnect = |delay, fresh_token, why| Step::Reconnect {
        delay,
        fresh_token,
        attempt: attempt.saturating_add(1),
        why,
    };
    if ctx.app_closed {
        return Step::Stop(StopReason::AppClosed);
    }
    if let Some(status) = close.http_status {
        return match status {
            400 | 403 => Step::Stop(StopReason::UpgradeRefused(status)),
            401 if ctx.can_refresh_token && !ctx.asked_token_after_401 => {
                reconnect(Duration::ZERO, true, ReconnectReason::Unauthorized)
            }
            401 => Step::Stop(StopReason::UpgradeRefused(status)),
            _ => {
                let delay = backoff_delay(attempt, ctx.backoff, ctx.random);
                reconnect(delay, false, ReconnectReason::HttpStatus(status))
            }
        };
    }
    let token_expired = code == TOKEN_EXPIRED;
    if token_expired && !ctx.can_refresh_token {
        return Step::Stop(StopReason::TokenExpiredWithoutHook);
    }
    if let Some(delay) = ctx.going_away {
        return reconnect(delay, token_expired, ReconnectReason::GoingAway);
    }
    if token_expired {
        let delay = backoff_delay(0, ctx.backoff, ctx.random);
        return reconnect(delay, true, ReconnectReason::TokenExpired);
    }
    if RETRY_CODES.contains(&code) {
        let delay = backoff_delay(attempt, ctx.backoff, ctx.random);
        return reconnect(delay, false, ReconnectReason::Retry(code));
    }
    if code == 1000 {
        return Step::Stop(StopReason::NormalClosure);
    }
    if REFUSED_CODES.contains(&code) {
        return Step::Stop(StopReason::Refused(code));
    }
    Step::Stop(StopReason::Other(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn backoff_delay_is_full_jitter_under_a_doubling_capped_ceiling() {
        let b = Backoff::default();
        // (attempt, random, expected ms)
        let table: &[(u32, f64, u64)] = &[
            (0, 0.0, 0),
            (0, 0.5, 250),
            (0, 0.999_999, 499),
            (0, 1.0, 499), // never the ceiling itself
            (1, 0.5, 500),
            (1, 0.999_999, 999),
            (2, 0.5, 1000),
            (3, 0.5, 2000),
            (4, 0.5, 4000),
            (5, 0.5, 5000), // 16 s capped at 10 s
            (5, 1.0, 9999),
            (6, 0.5, 5000),
            (1000, 0.5, 5000), // 2^1000 is infinite: still the cap
            (u32::MAX, 0.999, 9990),
            (0, -1.0, 0), // clamped
            (0, f64::NAN, 0),
            (0, 7.0, 499),
        ];
        for &(attempt, random, expected) in table {
            assert_eq!(
                backoff_delay(attempt, b, random),
                MS(expected),
                "attempt {attempt}, random {random}"
            );
        }
        let zero = Backoff {
            base: Duration::ZERO,
            cap: Duration::ZERO,
        };
        assert_eq!(backoff_delay(3, zero, 0.7), Duration::ZERO);
        let small = Backoff {
            base: MS(100),
            cap: MS(300),
        };
        assert_eq!(backoff_delay(0, small, 0.5), MS(50));
        assert_eq!(backoff_delay(3, small, 0.5), MS(150));
    }

    fn ctx() -> StepContext {
        StepContext {
            app_closed: false,
            going_away: None,
            welcomed: false,
            attempt: 0,
            can_refresh_token: false,
            asked_token_after_401: false,
            backoff: Backoff::default(),
            random: 0.5,
        }
    }

    fn close(code: u16) -> CloseInfo {
        CloseInfo {
            code,
            reason: String::new(),
            clean: true,
            http_status: None,
        }
    }

    fn reconnect(delay: u64, fresh_token: bool, attempt: u32, why: ReconnectReason) -> Step {
        Step::Reconnect {
            delay: MS(delay),
            fresh_token,
            attempt,
            why,
        }
    }

    #[test]
    fn next_step_follows_the_policy_table() {
        use ReconnectReason::*;
        use StopReason::*;
        let app_closed = StepContext {
            app_closed: true,
            ..ctx()
        };
        let going_away = StepContext {
            going_away: Some(MS(1234)),
            ..ctx()
        };
        let going_away_hook = StepContext {
            can_refresh_token: true,
            ..going_away
        };
        let hook = StepContext {
            can_refresh_token: true,
            ..ctx()
        };
        let third = StepContext {
            attempt: 3,
            ..ctx()
        };
        let third_welcomed = StepContext {
            welcomed: true,
            ..third
        };
        let table: Vec<(&str, u16, StepContext, Step)> = vec![
            // The app's close wins over everything.
            ("app closed, 1006", 1006, app_closed, Step::Stop(AppClosed)),
            ("app closed, 1000", 1000, app_closed, Step::Stop(AppClosed)),
            (
                "app closed after going_away",
                1001,
                StepContext {
                    app_closed: true,
                    ..going_away
                },
                Step::Stop(AppClosed),
            ),
            // going_away: its delay, whatever the code.
            (
                "going_away 1001",
                1001,
                going_away,
                reconnect(1234, false, 1, GoingAway),
            ),
            (
                "going_away 1000",
                1000,
                going_away,
                reconnect(1234, false, 1, GoingAway),
            ),
            (
                "going_away 1008",
                1008,
                going_away,
                reconnect(1234, false, 1, GoingAway),
            ),
            (
                "going_away 4000",
                4000,
                going_away,
                reconnect(1234, false, 1, GoingAway),
            ),
            (
                "going_away 3000, no hook",
                3000,
                going_away,
                Step::Stop(TokenExpiredWithoutHook),
            ),
            (
                "going_away 3000, hook",
                3000,
                going_away_hook,
                reconnect(1234, true, 1, GoingAway),
            ),
            // Retryable codes: backoff by attempt.
            (
                "1006 first",
                1006,
                ctx(),
                reconnect(250, false, 1, Retry(1006)),
            ),
            ("1001", 1001, ctx(), reconnect(250, false, 1, Retry(1001))),
            ("1005", 1005, ctx(), reconnect(250, false, 1, Retry(1005))),
            ("1011", 1011, ctx(), reconnect(250, false, 1, Retry(1011))),
            ("1012", 1012, ctx(), reconnect(250, false, 1, Retry(1012))),
            ("1013", 1013, ctx(), reconnect(250, false, 1, Retry(1013))),
            ("1014", 1014, ctx(), reconnect(250, false, 1, Retry(1014))),
            (
                "1006 fourth",
                1006,
                third,
                reconnect(2000, false, 4, Retry(1006)),
            ),
            (
                "1006 after a welcome",
                1006,
                third_welcomed,
                reconnect(250, false, 1, Retry(1006)),
            ),
            // Token expired.
            (
                "3000 no hook",
                3000,
                ctx(),
                Step::Stop(TokenExpiredWithoutHook),
            ),
            (
                "3000 hook",
                3000,
                hook,
                reconnect(250, true, 1, TokenExpired),
            ),
            (
                "3000 hook, fourth: random(0, base)",
                3000,
                StepContext { attempt: 3, ..hook },
                reconnect(250, true, 4, TokenExpired),
            ),
            // Stops.
            ("1000", 1000, ctx(), Step::Stop(NormalClosure)),
            ("1000 with hook", 1000, hook, Step::Stop(NormalClosure)),
            ("1002", 1002, ctx(), Step::Stop(Refused(1002))),
            ("1003", 1003, ctx(), Step::Stop(Refused(1003))),
            ("1007", 1007, ctx(), Step::Stop(Refused(1007))),
            ("1008", 1008, ctx(), Step::Stop(Refused(1008))),
            ("1009", 1009, ctx(), Step::Stop(Refused(1009))),
            ("1010", 1010, ctx(), Step::Stop(Refused(1010))),
            ("1015", 1015, ctx(), Step::Stop(Other(1015))),
            ("3001", 3001, hook, Step::Stop(Other(3001))),
            ("4000", 4000, ctx(), Step::Stop(Other(4000))),
            ("4999", 4999, ctx(), Step::Stop(Other(4999))),
            ("999", 999, ctx(), Step::Stop(Other(999))),
            ("1004", 1004, ctx(), Step::Stop(Other(1004))),
        ];
        for (name, code, ctx, expected) in table {
            assert_eq!(next_step(&close(code), &ctx), expected, "{name}");
        }
    }

    #[test]
    fn next_step_reads_the_status_of_a_refused_upgrade() {
        use ReconnectReason::*;
        use StopReason::*;
        let hook = StepContext {
            can_refresh_token: true,
            ..ctx()
        };
        let hook_after_401 = StepContext {
            asked_token_after_401: true,
            ..hook
        };
        let third = StepContext { attempt: 3, ..hook };
        let table: Vec<(&str, u16, StepContext, Step)> = vec![
            ("400: stop", 400, hook, Step::Stop(UpgradeRefused(400))),
            ("403: stop", 403, hook, Step::Stop(UpgradeRefused(403))),
            (
                "403 without a hook",
                403,
                ctx(),
                Step::Stop(UpgradeRefused(403)),
            ),
            (
                "401 with a hook: a fresh token, at once",
                401,
                hook,
                reconnect(0, true, 1, Unauthorized),
            ),
            (
                "401 again since the hook was asked: stop",
                401,
                hook_after_401,
                Step::Stop(UpgradeRefused(401)),
            ),
            (
                "401 without a hook: stop",
                401,
                ctx(),
                Step::Stop(UpgradeRefused(401)),
            ),
            (
                "429: back off",
                429,
                ctx(),
                reconnect(250, false, 1, HttpStatus(429)),
            ),
            (
                "503: back off by attempt",
                503,
                third,
                reconnect(2000, false, 4, HttpStatus(503)),
            ),
            (
                "503 after a 401's fresh token",
                503,
                hook_after_401,
                reconnect(250, false, 1, HttpStatus(503)),
            ),
            (
                "404 (not wsgrace?): back off",
                404,
                ctx(),
                reconnect(250, false, 1, HttpStatus(404)),
            ),
            (
                "the app's close wins",
                403,
                StepContext {
                    app_closed: true,
                    ..ctx()
                },
                Step::Stop(AppClosed),
            ),
        ];
        for (name, status, ctx, expected) in table {
            let refused = CloseInfo::refused(status, None);
            assert_eq!(next_step(&refused, &ctx), expected, "{name}");
        }
    }

    #[test]
    fn a_refused_upgrade_says_its_status_and_the_first_line_of_its_body() {
        let long = "é".repeat(100);
        let table: Vec<(u16, Option<&[u8]>, String)> = vec![
            (503, None, "HTTP 503".into()),
            (503, Some(b""), "HTTP 503".into()),
            (503, Some(b"draining\n"), "HTTP 503: draining".into()),
            (
                403,
                Some(b"  room not granted  \r\nmore\n"),
                "HTTP 403: room not granted".into(),
            ),
            (400, Some(b"\xff bad\n"), "HTTP 400: \u{fffd} bad".into()),
            // Cut at 123 bytes, on a character boundary (é is two bytes).
            (
                400,
                Some(long.as_bytes()),
                format!("HTTP 400: {}", "é".repeat(61)),
            ),
        ];
        for (status, body, reason) in table {
            let close = CloseInfo::refused(status, body);
            assert_eq!(
                close,
                CloseInfo {
                    code: 1006,
                    reason,
                    clean: false,
                    http_status: Some(status),
                }
            );
        }
    }

    #[test]
    fn next_step_saturates_the_attempt_counter() {
        let ctx = StepContext {
            attempt: u32::MAX,
            ..ctx()
        };
        let step = next_step(&close(1006), &ctx);
        assert_eq!(
            step,
            reconnect(5000, false, u32::MAX, ReconnectReason::Retry(1006))
        );
    }
}
