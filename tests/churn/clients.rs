//! The churn clients: each one connects (over tokio-tungstenite or the kit's raw-frame
//! client, as its [`Kind`] needs), says `hello N` so that the driver can name its session,
//! chats, and ends the way its kind says, while the test makes the close calls the kind
//! needs on its session; then it reports what it saw. [`run_round`] launches a round of
//! them, with bounded concurrency, and waits until they are done.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgrace::{CloseStatus, SessionHandle};
use wsgrace_kit::frame::{
    close_payload, encode_frame, RawFrame, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,
};
use wsgrace_kit::proc_stats::own_rss;
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::ws::Ws;
use wsgrace_kit::DEADLINE;

use crate::behaviour::{Bad, Call, CallRecord, Kind, Mode, Obs, Peer};
use crate::ledger::{Pending, Shared};
use crate::{CLIENT_DEADLINE, CONCURRENCY, MAX_CLIENTS, ROOMS};

pub struct ClientCtx {
    n: u64,
    kind: Kind,
    room: u8,
    addr: SocketAddr,
    rng: StdRng,
    shared: Arc<Mutex<Shared>>,
    session: Option<SessionHandle>,
    closers: Vec<JoinHandle<()>>,
}

impl ClientCtx {
    pub fn path(&self) -> String {
        format!("/ws?room=room{}&name=c{}", self.room, self.n)
    }

    pub fn register(&self) -> oneshot::Receiver<SessionHandle> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            kind: self.kind,
            room: self.room,
            tx,
        };
        self.shared
            .lock()
            .expect("shared lock")
            .pending
            .insert(self.n, pending);
        rx
    }

    pub async fn take_handle(
        &mut self,
        rx: oneshot::Receiver<SessionHandle>,
    ) -> Result<(), String> {
        let handle = timeout(DEADLINE, rx)
            .await
            .map_err(|_| "the driver did not name the session".to_string())?
            .map_err(|_| "the driver dropped the client".to_string())?;
        self.session = Some(handle);
        Ok(())
    }

    pub fn handle(&self) -> SessionHandle {
        self.session.clone().expect("session handle")
    }

    /// A random status for a server-initiated close.
    pub fn status(&mut self) -> Option<CloseStatus> {
        let status = match self.rng.gen_range(0..4) {
            0 => return None,
            1 => CloseStatus::new(1000, ""),
            2 => CloseStatus::new(1001, "going away"),
            _ => CloseStatus::new(self.rng.gen_range(4000..5000), "kicked"),
        };
        Some(status.expect("valid status"))
    }

    /// Calls `close` or `close_output` on the session from its own task, and reports the
    /// answer (or its absence) to the driver.
    pub fn spawn_close(&mut self, call: Call, status: Option<CloseStatus>) {
        let handle = self.handle();
        let shared = self.shared.clone();
        self.closers.push(tokio::spawn(async move {
            let answer = match call {
                Call::Close => timeout(DEADLINE, handle.close(status.clone())).await,
                Call::CloseOutput => timeout(DEADLINE, handle.close_output(status.clone())).await,
            }
            .ok();
            let record = CallRecord {
                call,
                status,
                answer,
            };
            shared
                .lock()
                .expect("shared lock")
                .report_call(handle.id(), record);
        }));
    }

    /// Sometimes lets other tasks run first, to vary which side of a race wins.
    pub async fn maybe_yield(&mut self) {
        for _ in 0..self.rng.gen_range(0..3) {
            tokio::task::yield_now().await;
        }
    }

    /// How long to stay idle (reading) between two chat messages.
    pub fn pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(0..300))
    }
}

pub async fn ws_connect(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    Ok(ws)
}

/// Sends `text` and reads until its echo (others' chat and pings are skipped).
pub async fn ws_echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::Text(text.to_string()))
        .await
        .map_err(|e| format!("send {text:?}: {e}"))?;
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t == text => return Ok(()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("close {frame:?} while waiting for {text:?}"))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("error while waiting for {text:?}: {e}")),
                None => return Err(format!("end while waiting for {text:?}")),
            }
        }
    };
    timeout(DEADLINE, read)
        .await
        .map_err(|_| format!("no echo of {text:?}"))?
}

/// Reads until the server's close frame, then until the end of the connection: nothing may
/// follow the close frame. Returns the frame's code.
pub async fn ws_close_then_end(ws: &mut Ws) -> Result<Option<u16>, String> {
    let code = loop {
        match timeout(DEADLINE, ws.next()).await {
            Err(_) => return Err("no close frame before the deadline".into()),
            Ok(None) => return Err("the connection ended without a close frame".into()),
            Ok(Some(Err(e))) => return Err(format!("error before the close frame: {e}")),
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
        }
    };
    match timeout(DEADLINE, ws.next()).await {
        Err(_) => Err("the server did not close TCP after the handshake".into()),
        Ok(None) | Ok(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => Ok(code),
        Ok(Some(Err(e))) => Err(format!("error after the close frame: {e}")),
        Ok(Some(Ok(m))) => Err(format!("a frame after the close frame: {m:?}")),
    }
}

/// Reads (tungstenite answers pings) for `time`; the connection must stay open.
pub async fn ws_idle(ws: &mut Ws, time: Duration) -> Result<(), String> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return format!("close {frame:?} while idle"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("error while idle: {e}"),
                None => return "end while idle".to_string(),
            }
        }
    };
    match timeout(time, read).await {
        Err(_) => Ok(()),
        Ok(err) => Err(err),
    }
}

/// The raw client, remembering when it last wrote.
pub struct Raw {
    c: RawClient,
    last_write: Instant,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, path: &str) -> Raw {
        Raw {
            c: RawClient::connect(addr, path).await,
            last_write: Instant::now(),
        }
    }

    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.c.send_frame(true, opcode, payload).await;
        self.last_write = Instant::now();
    }

    /// The next frame that is not a ping; pings are answered.
    pub async fn next(&mut self) -> Option<RawFrame> {
        loop {
            let frame = self.c.read_frame().await?;
            if frame.opcode != OP_PING {
                return Some(frame);
            }
            self.send_frame(OP_PONG, &frame.payload).await;
        }
    }

    /// Sends `text` and reads until its echo.
    pub async fn echo(&mut self, text: &str) -> Result<(), String> {
        self.send_frame(OP_TEXT, text.as_bytes()).await;
        let read = async {
            loop {
                match self.next().await {
                    Some(f) if f.opcode == OP_TEXT && f.payload == text.as_bytes() => return Ok(()),
                    Some(f) if f.opcode == OP_CLOSE => {
                        return Err(format!(
                            "close {:?} while waiting for {text:?}",
                            f.close_code()
                        ))
                    }
                    Some(_) => {}
                    None => return Err(format!("EOF while waiting for {text:?}")),
                }
            }
        };
        timeout(DEADLINE, read)
            .await
            .map_err(|_| format!("no echo of {text:?}"))?
    }

    /// Reads (answering pings) for `time`; the connection must stay open.
    pub async fn idle(&mut self, time: Duration) -> Result<(), String> {
        let read = async {
            loop {
                match self.next().await {
                    Some(f) if f.opcode == OP_CLOSE => {
                        return format!("close {:?} while idle", f.close_code())
                    }
                    Some(_) => {}
                    None => return "EOF while idle".to_string(),
                }
            }
        };
        match timeout(time, read).await {
            Err(_) => Ok(()),
            Ok(err) => Err(err),
        }
    }

    /// Reads (answering pings) until the server's close frame. Returns its code and how long
    /// the client had been quiet (had written nothing) when it arrived.
    pub async fn close_frame(&mut self) -> Result<(Option<u16>, Duration), String> {
        let read = async {
            loop {
                match self.next().await {
                    Some(f) if f.opcode == OP_CLOSE => {
                        return Ok((f.close_code(), self.last_write.elapsed()))
                    }
                    Some(_) => {}
                    None => return Err("EOF without a close frame".to_string()),
                }
            }
        };
        timeout(DEADLINE, read)
            .await
            .map_err(|_| "no close frame before the deadline".to_string())?
    }

    /// After the close frame: no frame at all, then EOF.
    pub async fn eof(&mut self) -> Result<(), String> {
        match timeout(DEADLINE, self.c.read_frame()).await {
            Err(_) => Err("the server did not close TCP".into()),
            Ok(None) => Ok(()),
            Ok(Some(f)) => Err(format!("a frame after the close frame: {f:?}")),
        }
    }
}

pub async fn client_script(ctx: &mut ClientCtx) -> Result<Obs, String> {
    let kind = ctx.kind;
    let path = ctx.path();
    if kind == Kind::ResetAfterUpgrade {
        RawClient::connect(ctx.addr, &path).await.reset();
        return Ok(Obs::default());
    }
    let chats = ctx.rng.gen_range(0..=4);
    let linger = Duration::from_millis(ctx.rng.gen_range(0..800));
    let handle_rx = ctx.register();
    let n = ctx.n;
    if kind.uses_ws() {
        let mut ws = ws_connect(ctx.addr, &path).await?;
        ws_echo(&mut ws, &format!("hello {n}")).await?;
        ctx.take_handle(handle_rx).await?;
        ws_idle(&mut ws, linger).await?;
        for i in 0..chats {
            ws_echo(&mut ws, &format!("chat {n} {i}")).await?;
            ws_idle(&mut ws, ctx.pause()).await?;
        }
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        let code = match kind {
            Kind::ClientClose1000 | Kind::ClientCloseNoCode => {
                let frame = (kind == Kind::ClientClose1000).then_some(bye);
                ws.close(frame).await.map_err(|e| format!("close: {e}"))?;
                ws_close_then_end(&mut ws).await?
            }
            Kind::Server(mode, Peer::AckWs) => {
                let status = ctx.status();
                let call = match mode {
                    Mode::Awaited => Call::Close,
                    Mode::FireAndForget => Call::CloseOutput,
                };
                ctx.spawn_close(call, status);
                if ctx.rng.gen_bool(0.5) {
                    // Races the close frame: delivered or dropped as the mode says.
                    let _ = ws.send(Message::Text(format!("chat {n} racing"))).await;
                }
                ws_close_then_end(&mut ws).await?
            }
            Kind::RaceClientClose(mode) => {
                let status = ctx.status();
                let call = match mode {
                    Mode::Awaited => Call::Close,
                    Mode::FireAndForget => Call::CloseOutput,
                };
                // Either side starts, then the other follows at once.
                if ctx.rng.gen_bool(0.5) {
                    ctx.spawn_close(call, status);
                    ctx.maybe_yield().await;
                    ws.close(Some(bye))
                        .await
                        .map_err(|e| format!("close: {e}"))?;
                } else {
                    ws.close(Some(bye))
                        .await
                        .map_err(|e| format!("close: {e}"))?;
                    ctx.maybe_yield().await;
                    ctx.spawn_close(call, status);
                }
                ws_close_then_end(&mut ws).await?
            }
            Kind::CloseTwice => {
                let a = Some(CloseStatus::new(4001, "twice-a").expect("valid"));
                let b = Some(CloseStatus::new(4002, "twice-b").expect("valid"));
                if ctx.rng.gen_bool(0.5) {
                    ctx.spawn_close(Call::Close, a);
                    ctx.spawn_close(Call::CloseOutput, b);
                } else {
                    ctx.spawn_close(Call::CloseOutput, b);
                    ctx.spawn_close(Call::Close, a);
                }
                ws_close_then_end(&mut ws).await?
            }
            Kind::DropWs => {
                drop(ws);
                return Ok(Obs::default());
            }
            other => unreachable!("{other:?} is a raw client"),
        };
        return Ok(Obs {
            close_code: Some(code),
            quiet_before_close: None,
            failed: false,
        });
    }

    let mut c = Raw::connect(ctx.addr, &path).await;
    c.echo(&format!("hello {n}")).await?;
    ctx.take_handle(handle_rx).await?;
    c.idle(linger).await?;
    for i in 0..chats {
        c.echo(&format!("chat {n} {i}")).await?;
        c.idle(ctx.pause()).await?;
    }
    let mut quiet = None;
    let code = match kind {
        Kind::Server(mode, peer) => {
            let status = ctx.status();
            let call = match mode {
                Mode::Awaited => Call::Close,
                Mode::FireAndForget => Call::CloseOutput,
            };
            ctx.spawn_close(call, status);
            let (code, quiet_for) = c.close_frame().await?;
            quiet = Some(quiet_for);
            match peer {
                Peer::AckRaw => c.send_frame(OP_CLOSE, &close_payload(1000, b"")).await,
                Peer::LateThenAck => {
                    c.send_frame(OP_TEXT, format!("late {n}").as_bytes()).await;
                    c.send_frame(OP_CLOSE, &close_payload(1000, b"")).await;
                }
                Peer::NoAck => {}
                Peer::AckWs => unreachable!("a tungstenite client"),
            }
            c.eof().await?;
            Some(code)
        }
        Kind::RaceReset(mode) => {
            let status = ctx.status();
            let call = match mode {
                Mode::Awaited => Call::Close,
                Mode::FireAndForget => Call::CloseOutput,
            };
            if ctx.rng.gen_bool(0.5) {
                ctx.spawn_close(call, status);
                ctx.maybe_yield().await;
                c.c.reset();
            } else {
                c.c.reset();
                ctx.maybe_yield().await;
                ctx.spawn_close(call, status);
            }
            None
        }
        Kind::Reset => {
            c.c.reset();
            None
        }
        Kind::DropRaw => {
            drop(c);
            None
        }
        Kind::Silent => {
            // Neither reads nor writes from now on; the frames the server sends meanwhile
            // (pings, the room's chat) pile up in the socket until the abort ends it.
            let wait = async {
                while let Some(f) = c.c.read_frame().await {
                    if f.opcode == OP_CLOSE {
                        return Err(format!("a silent client got a close frame: {f:?}"));
                    }
                }
                Ok(())
            };
            timeout(DEADLINE, wait)
                .await
                .map_err(|_| "a silent client was not aborted".to_string())??;
            None
        }
        Kind::Bad(bad) => {
            match bad {
                Bad::Binary => c.send_frame(OP_BINARY, b"\x00\x01binary").await,
                Bad::InvalidUtf8 => c.send_frame(OP_TEXT, &[0xc3, 0x28, 0xff]).await,
                Bad::ForbiddenCloseCode => c.send_frame(OP_CLOSE, &close_payload(1005, b"")).await,
                Bad::Unmasked => {
                    c.c.send_raw(&encode_frame(true, 0, OP_TEXT, false, b"unmasked"))
                        .await
                }
            }
            let (code, _) = c.close_frame().await?;
            c.eof().await?;
            Some(code)
        }
        other => unreachable!("{other:?} is a tungstenite client"),
    };
    Ok(Obs {
        close_code: code,
        quiet_before_close: quiet,
        failed: false,
    })
}

pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Runs one client with its deadline, waits for its close calls, and reports.
pub async fn run_client(mut ctx: ClientCtx) {
    let result = timeout(
        CLIENT_DEADLINE,
        AssertUnwindSafe(client_script(&mut ctx)).catch_unwind(),
    )
    .await;
    for closer in std::mem::take(&mut ctx.closers) {
        // Each closer bounds its call by DEADLINE; a panic there shows as a missing call.
        if timeout(DEADLINE * 2, closer).await.is_err() {
            ctx.shared
                .lock()
                .expect("shared lock")
                .fail(format!("client {}: a close call task hung", ctx.n));
        }
    }
    let failure = match result {
        Ok(Ok(Ok(obs))) => Ok(obs),
        Ok(Ok(Err(err))) => Err(err),
        Ok(Err(panic)) => Err(format!("panicked: {}", panic_message(&*panic))),
        Err(_) => Err(format!("not done within {CLIENT_DEADLINE:?}")),
    };
    let mut s = ctx.shared.lock().expect("shared lock");
    *s.kinds.entry(format!("{:?}", ctx.kind)).or_default() += 1;
    if ctx.kind == Kind::ResetAfterUpgrade {
        s.reset_after_upgrade += 1;
    }
    let obs = match failure {
        Ok(obs) => obs,
        Err(err) => {
            s.fail(format!("client {} ({:?}): {err}", ctx.n, ctx.kind));
            Obs {
                failed: true,
                ..Obs::default()
            }
        }
    };
    if s.pending.remove(&ctx.n).is_some() && !obs.failed {
        s.fail(format!("client {} ({:?}) was never named", ctx.n, ctx.kind));
    }
    if let Some(handle) = &ctx.session {
        s.report_obs(handle.id(), obs);
    }
}

/// A round: launches clients for `round_len` (at most [`CONCURRENCY`] at a time and
/// [`MAX_CLIENTS`] over the soak), numbered on from `next_client`, each with a kind, a room
/// and a seed drawn from `rng`; then waits until they are done. Returns how long launching
/// took and the highest RSS sampled meanwhile.
pub async fn run_round(
    addr: SocketAddr,
    shared: &Arc<Mutex<Shared>>,
    rng: &mut StdRng,
    next_client: &mut u64,
    round_len: Duration,
) -> (Duration, u64) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let round_start = Instant::now();
    let mut clients = JoinSet::new();
    let mut peak_rss = 0;
    while round_start.elapsed() < round_len && *next_client < MAX_CLIENTS {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        while clients.try_join_next().is_some() {}
        if *next_client % 500 == 0 {
            peak_rss = peak_rss.max(own_rss().expect("VmRSS"));
        }
        let ctx = ClientCtx {
            n: *next_client,
            kind: Kind::pick(rng),
            room: rng.gen_range(0..ROOMS),
            addr,
            rng: StdRng::seed_from_u64(rng.gen()),
            shared: shared.clone(),
            session: None,
            closers: Vec::new(),
        };
        *next_client += 1;
        clients.spawn(async move {
            run_client(ctx).await;
            drop(permit);
        });
    }
    let launched = round_start.elapsed();
    // Every client is bounded by CLIENT_DEADLINE plus its close calls' deadlines.
    timeout(CLIENT_DEADLINE + DEADLINE * 3, async {
        while clients.join_next().await.is_some() {}
    })
    .await
    .expect("clients still running past their deadlines");
    (launched, peak_rss)
}
