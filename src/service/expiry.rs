//! A session that ends when its token does: [`Expiring`] wraps a [`SessionHandler`] and,
//! once the session has started, closes it with 3000 "token expired" at a deadline (the
//! token's `exp` plus [`super::auth::LEEWAY`]).
//!
//! The close goes through the session's shutdown path ([`SessionHandle::shutdown`]), so it
//! is made in the session's close mode (the room's `close.room_modes` entry, else
//! `close.mode`, as the handler's [`SessionHandler::shutdown_mode`] decides) and is ignored
//! by a session already closing. The timer is a task on the session's own thread, cancelled
//! when the session ends (and when the handler is dropped). This module must not decide what
//! a token means (that is `auth.rs`) nor how a close proceeds (that is the session's machine).

use std::time::{Duration, SystemTime};

use bytestring::ByteString;
use log::{error, info};

use crate::close::{CloseMode, CloseStatus};
use crate::connection::session::{SessionEnd, SessionHandle, SessionHandler};
use crate::service::auth::{TOKEN_EXPIRED_CODE, TOKEN_EXPIRED_REASON};

/// A handler whose session closes with 3000 "token expired" at `closes_at` (never without
/// one).
pub struct Expiring<H> {
    inner: H,
    closes_at: Option<SystemTime>,
    timer: Option<actix_rt::task::JoinHandle<()>>,
}

impl<H: SessionHandler> Expiring<H> {
    /// `inner`, closed at `closes_at` when given.
    pub fn new(inner: H, closes_at: Option<SystemTime>) -> Self {
        Expiring {
            inner,
            closes_at,
            timer: None,
        }
    }

    fn cancel(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl<H> Drop for Expiring<H> {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl<H: SessionHandler> SessionHandler for Expiring<H> {
    fn on_start(&mut self, session: &SessionHandle) {
        self.inner.on_start(session);
        let Some(closes_at) = self.closes_at else {
            return;
        };
        let status = match CloseStatus::new(TOKEN_EXPIRED_CODE, TOKEN_EXPIRED_REASON) {
            Ok(status) => status,
            Err(err) => {
                error!(
                    "session={} internal: bad expiry status: {err}",
                    session.id()
                );
                return;
            }
        };
        let delay = closes_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let session = session.clone();
        self.timer = Some(actix_rt::spawn(async move {
            actix_rt::time::sleep(delay).await;
            info!(
                "session={} token expired: closing {TOKEN_EXPIRED_CODE}",
                session.id()
            );
            session.shutdown(Some(status));
        }));
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        self.inner.on_message(session, text)
    }

    fn shutdown_mode(&mut self, default: CloseMode) -> CloseMode {
        self.inner.shutdown_mode(default)
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        self.cancel();
        self.inner.on_end(session, end)
    }
}
