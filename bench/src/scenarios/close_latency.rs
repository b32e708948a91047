//! `close-latency M`: client-initiated close round trips. Each repetition opens a
//! connection, waits for the welcome, sends close 1000, and times the server's close
//! frame and then the TCP end (EOF expected: the server closes right after the handshake).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use super::{await_welcome, hist_json, micros, ms, new_histogram, stop_json, Ctx, Outcome};
use crate::client::{self, End, Frame, Read};
use crate::launch;

#[derive(Debug, clap::Args)]
pub struct CloseLatencyArgs {
    /// Repetitions.
    pub m: usize,
    /// Connections closing at the same time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Close code the client sends; the server must echo it.
    #[arg(long, default_value_t = 1000)]
    pub code: u16,
}

#[derive(Default)]
struct Results {
    done: Cell<usize>,
    failed: Cell<usize>,
    first_error: RefCell<Option<String>>,
    /// Server close frame carried another code than ours.
    code_mismatch: Cell<usize>,
    /// Data frames after the server's close frame.
    frames_after_close: Cell<usize>,
    /// TCP end without the server's close frame.
    no_close_frame: Cell<usize>,
    ends: RefCell<BTreeMap<&'static str, u64>>,
    to_close: RefCell<Option<Histogram<u64>>>,
    to_eof: RefCell<Option<Histogram<u64>>>,
}

impl Results {
    fn fail(&self, e: impl ToString) {
        self.failed.set(self.failed.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

async fn one(addr: std::net::SocketAddr, i: usize, code: u16, r: &Results) {
    let path = format!("/ws?room=close&name=c{i}");
    let (mut rd, mut wr) = match client::connect(addr, None, &path, i as u64).await {
        Ok(c) => c,
        Err(e) => return r.fail(e),
    };
    if let Err(e) = await_welcome(&mut rd, &mut wr).await {
        return r.fail(e);
    }
    let start = Instant::now();
    if let Err(e) = wr.close(Some(code), b"bye").await {
        return r.fail(e);
    }
    let mut closed_at = None;
    loop {
        match rd.next().await {
            Read::Frame(Frame::Close { code: got, .. }) => {
                if closed_at.is_some() {
                    r.frames_after_close.set(r.frames_after_close.get() + 1);
                    continue;
                }
                let now = Instant::now();
                closed_at = Some(now);
                if got != Some(code) {
                    r.code_mismatch.set(r.code_mismatch.get() + 1);
                }
                if let Some(h) = r.to_close.borrow_mut().as_mut() {
                    let _ = h.record(micros(now - start));
                }
            }
            Read::Frame(Frame::Message { .. }) if closed_at.is_some() => {
                r.frames_after_close.set(r.frames_after_close.get() + 1);
            }
            Read::Frame(_) => {}
            Read::End(end) => {
                let now = Instant::now();
                let name = match end {
                    End::Eof => "eof",
                    End::Reset => "reset",
                    End::Error => "error",
                };
                *r.ends.borrow_mut().entry(name).or_default() += 1;
                if closed_at.is_none() {
                    r.no_close_frame.set(r.no_close_frame.get() + 1);
                } else if end == End::Eof {
                    if let Some(h) = r.to_eof.borrow_mut().as_mut() {
                        let _ = h.record(micros(now - start));
                    }
                }
                break;
            }
        }
    }
    r.done.set(r.done.get() + 1);
}

pub async fn run(ctx: &Ctx, args: &CloseLatencyArgs) -> Result<Outcome, String> {
    let mut server = launch::start(&ctx.server, &[])?;
    eprintln!(
        "close-latency: server pid {} on {}",
        server.pid(),
        server.addr
    );
    let results = Rc::new(Results {
        to_close: RefCell::new(Some(new_histogram())),
        to_eof: RefCell::new(Some(new_histogram())),
        ..Results::default()
    });
    let next = Rc::new(Cell::new(0usize));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.clamp(1, args.m.max(1)) {
        let (results, next, addr, m, code) = (
            results.clone(),
            next.clone(),
            server.addr,
            args.m,
            args.code,
        );
        workers.push(tokio::task::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= m {
                    break;
                }
                next.set(i + 1);
                // One repetition may not hang the run: the server should answer in ms.
                if tokio::time::timeout(Duration::from_secs(10), one(addr, i, code, &results))
                    .await
                    .is_err()
                {
                    results.fail(format!("repetition {i} took over 10 s"));
                }
            }
        }));
    }
    let finished = tokio::time::timeout_at(ctx.deadline, async {
        for w in workers {
            let _ = w.await;
        }
    })
    .await
    .is_ok();
    let elapsed = started.elapsed();
    let stop = stop_json(&mut server, Duration::from_secs(15)).await;
    let r = &results;
    let to_close = r.to_close.borrow_mut().take().unwrap_or_else(new_histogram);
    let to_eof = r.to_eof.borrow_mut().take().unwrap_or_else(new_histogram);
    let ok = finished && r.failed.get() == 0 && r.done.get() == args.m;
    let report = json!({
        "scenario": "close-latency",
        "m": args.m,
        "concurrency": args.concurrency,
        "complete": ok,
        "timed_out": !finished,
        "done": r.done.get(),
        "failed": r.failed.get(),
        "first_error": *r.first_error.borrow(),
        "code_mismatch": r.code_mismatch.get(),
        "no_close_frame": r.no_close_frame.get(),
        "frames_after_close": r.frames_after_close.get(),
        "tcp_ends": *r.ends.borrow(),
        "close_to_close_frame": hist_json(&to_close),
        "close_to_eof": hist_json(&to_eof),
        "elapsed_ms": ms(elapsed),
        "server": stop,
    });
    Ok(Outcome { report, ok })
}
