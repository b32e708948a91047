//! The HTTP faces of the server: the routes ([`server`]), the server API ([`api`]) and the upgrade checks
//! ([`admission`]), signals and
//! readiness ([`shutdown`]), tokens ([`auth`], [`expiry`]), the client's address
//! ([`client_address`]) and the open-files budget ([`open_files`]).
//!
//! This is the top floor: it assembles connections, rooms and a broker into the server the
//! binary runs, and nothing below imports it.

pub mod admission;
pub mod api;
pub mod auth;
pub mod client_address;
pub mod expiry;
pub mod open_files;
pub mod refusal_log;
pub mod server;
pub mod shutdown;
