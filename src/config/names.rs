//! The rule for room and nick names: 1 to 64 characters of `[A-Za-z0-9_.-]`. The config
//! checks `close.room_modes` keys with it, and the upgrade checks `?room=`, `?name=` and a
//! token's `sub` with the same function, so that a room the config can name is a room a
//! client can join.
//!
//! A pure predicate: it must not know which key or query parameter it is checking.

/// The longest room (or nick) name.
pub(super) const MAX_NAME_CHARS: usize = 64;

/// Whether `s` is a valid room or nick name: 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_name(s: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["lobby", "a", "A-z_0.9", &"x".repeat(64)] {
            assert!(is_valid_name(name), "{name:?}");
        }
        for name in ["", "no spaces", "é", "a/b", "a\n", &"x".repeat(65)] {
            assert!(!is_valid_name(name), "{name:?}");
        }
    }
}
