//! The wire frames the server sends and the client frames it reads, as plain types: serialized
//! in one place, so that every level builds the same JSON.
//!
//! Today the one-room protocol (v1): `welcome`, `error`, `going_away`, `epoch`, and the start
//! of every `message` frame. It imports nothing of the crate: connections, rooms, brokers and
//! the client all build on it.

pub mod frames;

pub use frames::{epoch_json, error_json, going_away_json, FrameError, MessageHead, Welcome};
