//! Rooms on this node: the supervisor that registers sessions and routes their messages, the
//! pure decisions of a room (who is enrolled, what each joining member is sent), the fan-out
//! shards of each worker thread, the resume merge and the drain.
//!
//! It talks to connections through their sessions' handles and outboxes
//! ([`crate::connection`]) and to the rest of the cluster through the broker seam
//! ([`crate::broker`]); it knows nothing of HTTP.

pub mod drain;
pub mod fanout;
pub mod handler;
pub mod resume;
pub mod room;
pub mod supervisor;
