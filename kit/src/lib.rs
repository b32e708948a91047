//! The one test kit of wsgrace, shared by `tests/` and `bench/`: the machinery a test or a
//! benchmark needs around the server, written once.
//!
//! - processes: [`child`] (a child process stopped whole, with every process it started),
//!   [`redis`] (a `redis-server` of the caller's own), [`sentinel`] (a master, replicas and
//!   three sentinels), [`redis_cluster`] (a Redis Cluster), [`server`] (the `wsgrace` binary,
//!   whose path the caller passes), [`nginx`], and with the `browser` feature
//!   `browser` (chromedriver and headless Chromium);
//! - the wire: [`frame`] (encoding client frames, parsing server frames), [`deflate`]
//!   (`permessage-deflate` as a client speaks it), [`handshake`]
//!   (connecting and the opening handshake), [`raw`] (a raw-frame client for what no
//!   well-behaved client sends), [`chat`] (a chat member reading typed frames),
//!   [`chat_v2`] (a `wsgrace.v2` connection in many rooms),
//!   [`traffic`] (talkers and resuming members under traffic), [`ws`] (a tokio-tungstenite
//!   connection), [`http`] (plain HTTP requests by hand), [`proxy`] (a TCP proxy a test
//!   can cut);
//! - the ground: [`port`] (free loopback ports), [`temp`] (temp files and dirs),
//!   [`proc_stats`] (RSS and CPU time from /proc), [`wait`] (deadlines), [`KitError`].
//!
//! Every child process the kit starts is stopped, whole, when its handle drops. Nothing
//! here knows the library's types: the kit speaks to the server over its wire and its
//! command line, as a user would.

pub mod api;
pub mod chat;
pub mod chat_v2;
pub mod child;
pub mod deflate;
mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod nginx;
pub mod port;
pub mod proc_stats;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
pub mod sentinel;
pub mod server;
pub mod temp;
pub mod traffic;
pub mod wait;
pub mod ws;

#[cfg(feature = "browser")]
pub mod browser;

pub use error::KitError;
pub use port::free_port;
pub use wait::DEADLINE;
