//! One connection: the bytes on its socket, its session actor and its close.
//!
//! [`transport`] turns bytes into frames and back, [`session`] is the actor that holds the
//! close state and the per-connection limits, [`linger`] ends the TCP connection so that the
//! peer reads the last bytes. [`handshake`], [`upgrade`] and [`request_deadline`] take a
//! connection from HTTP to a session; [`deflate_offer`] reads a `permessage-deflate` offer. Nothing here knows rooms, brokers or the HTTP routes:
//! a session hands its messages to a [`session::SessionHandler`].

pub mod deflate_offer;
pub mod handshake;
pub mod linger;
pub mod request_deadline;
pub mod session;
pub mod transport;
pub mod upgrade;
