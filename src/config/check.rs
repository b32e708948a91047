//! The checker every table's `validate` reports through: it turns a broken rule into a
//! [`ConfigError::InvalidValue`] that names the file and the dotted key, and checks the
//! common rule "a number within an inclusive range" with one wording for every key.
//!
//! It knows no table and no key: the tables say what to check. It must not read files or
//! the environment.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::Path;

use super::ConfigError;

/// Builds the errors of one validation pass for one file.
pub(super) struct Check<'a> {
    /// The file the config came from, named in every error.
    path: &'a Path,
}

impl<'a> Check<'a> {
    /// A checker whose errors name the file at `path`.
    pub(super) fn new(path: &'a Path) -> Check<'a> {
        Check { path }
    }

    /// The error for `key`, whose value broke the rule `message` states.
    pub(super) fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.to_owned(),
            key: key.to_owned(),
            message,
        }
    }

    /// Whether `value` of `key` lies within `allowed`, bounds included; the error says
    /// "must be between START and END, got VALUE".
    pub(super) fn range<T: PartialOrd + Display>(
        &self,
        key: &str,
        value: T,
        allowed: RangeInclusive<T>,
    ) -> Result<(), ConfigError> {
        if allowed.contains(&value) {
            return Ok(());
        }
        Err(self.invalid(
            key,
            format!(
                "must be between {} and {}, got {value}",
                allowed.start(),
                allowed.end()
            ),
        ))
    }
}
