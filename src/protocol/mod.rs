//! The wire frames the server sends and the client frames it reads, as plain types: serialized
//! in one place, so that every level builds the same JSON.
//!
//! [`frames`]: the one-room protocol's frames (v1: `welcome`, `error`, `going_away`, `epoch`,
//! and the start of every `message` frame), which v2 shares; [`v2`]: many rooms over one
//! connection (`wsgrace.v2`): the client frames and their pure parser, and the frames only v2
//! has. It imports only the ground floor (the name rule of [`crate::config`]): connections,
//! rooms, brokers and the client all build on it.

pub mod frames;
pub mod v2;

pub use frames::{
    epoch_json, error_json, going_away_json, write_going_away, FrameError, MessageHead, Welcome,
};
