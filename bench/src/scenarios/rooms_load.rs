//! The many-rooms load of `cluster-fanout --redis-cluster-compare`: N v1 members spread over
//! R rooms (`r-0` ... `r-{R-1}`, member i in room i mod R) and over the nodes (a room's
//! members alternate between them); member i < R is room i's sender (its node alternates
//! with the room). One send loop publishes M messages round robin over the rooms, keeping
//! at most `window` of each room's messages in flight (sent minus the sender's own copies
//! back), each carrying its send time (`t=<nanos>`). Measures messages per second (the
//! senders' own copies back), deliveries per second, send → delivery latency, losses and
//! order per member.
//!
//! It owns these clients and their counting only: it starts no server and no Redis, and it
//! must not read the servers' metrics (the scenario that uses it does).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::fanout::{parse_message, FanoutArgs};
use super::{connect_many, hist_json, micros, ms, new_histogram, ConnectStats, Ctx, Membership};
use crate::client::{Frame, Read, WsReader, WsWriter};

/// Counters shared by the send loop and every member (one thread: cells suffice).
struct Shared {
    base: Instant,
    /// Per room: messages sent minus the sender's own copies back.
    in_flight: Vec<Cell<u64>>,
    /// Woken by every sender's own copy.
    progress: Notify,
    acked: Cell<u64>,
    last_ack: Cell<Option<Instant>>,
    received: Cell<u64>,
    last_delivery: Cell<Option<Instant>>,
    latency: RefCell<Histogram<u64>>,
    out_of_order: Cell<u64>,
    unparsed: Cell<u64>,
    other_types: Cell<u64>,
    early_closes: RefCell<BTreeMap<String, u64>>,
    ended_early: Cell<u64>,
    stopping: Cell<bool>,
}

/// A sender's writer, shared with its reader (pongs, close replies).
type SharedWriter = Rc<Mutex<WsWriter>>;

/// The rooms' members joined on the nodes, and the rooms' senders.
pub struct RoomsLoad {
    rooms: usize,
    /// Members per room (the sender included).
    sizes: Vec<u64>,
    shared: Rc<Shared>,
    senders: Vec<Option<SharedWriter>>,
    stats: Rc<ConnectStats>,
    connected_all: bool,
}

/// What [`RoomsLoad::send`] did.
pub struct RoomsResult {
    pub sent: u64,
    pub expected: u64,
    pub ok: bool,
    timed_out: bool,
    send_error: Option<String>,
    ack_duration: Duration,
    delivery_duration: Duration,
}

fn room_name(room: usize) -> String {
    format!("r-{room}")
}

/// Member `i` of `rooms` rooms over `nodes` nodes: its room and its node.
fn place(i: usize, rooms: usize, nodes: usize) -> (usize, usize) {
    let room = i % rooms;
    (room, (i / rooms + room) % nodes)
}

async fn member(mut rd: WsReader, wr: SharedWriter, room: usize, sender: bool, shared: Rc<Shared>) {
    let mut last_seq = 0u64;
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                let now = Instant::now();
                let Some(parsed) = parse_message(payload) else {
                    shared.other_types.set(shared.other_types.get() + 1);
                    continue;
                };
                let Some((seq, t)) = parsed else {
                    shared.unparsed.set(shared.unparsed.get() + 1);
                    continue;
                };
                if last_seq != 0 && seq != last_seq + 1 {
                    shared.out_of_order.set(shared.out_of_order.get() + 1);
                }
                last_seq = seq;
                let sent = shared.base + Duration::from_nanos(t);
                let _ = shared
                    .latency
                    .borrow_mut()
                    .record(micros(now.saturating_duration_since(sent)));
                shared.received.set(shared.received.get() + 1);
                shared.last_delivery.set(Some(now));
                if sender {
                    if let Some(cell) = shared.in_flight.get(room) {
                        cell.set(cell.get().saturating_sub(1));
                    }
                    shared.acked.set(shared.acked.get() + 1);
                    shared.last_ack.set(Some(now));
                }
                shared.progress.notify_one();
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.lock().await.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                if !shared.stopping.get() {
                    let key = code.map_or("none".to_string(), |c| c.to_string());
                    *shared.early_closes.borrow_mut().entry(key).or_default() += 1;
                }
                let _ = wr.lock().await.close(code, b"").await;
            }
            Read::End(_) => {
                if !shared.stopping.get() {
                    shared.ended_early.set(shared.ended_early.get() + 1);
                    shared.progress.notify_one();
                }
                return;
            }
        }
    }
}

impl RoomsLoad {
    /// Joins `args.n` members to `rooms` rooms over `addrs`.
    pub async fn join(
        ctx: &Ctx,
        addrs: &[SocketAddr],
        args: &FanoutArgs,
        rooms: usize,
    ) -> RoomsLoad {
        let rooms = rooms.clamp(1, args.n.max(1));
        let nodes = addrs.len().max(1);
        let shared = Rc::new(Shared {
            base: Instant::now(),
            in_flight: (0..rooms).map(|_| Cell::new(0)).collect(),
            progress: Notify::new(),
            acked: Cell::new(0),
            last_ack: Cell::new(None),
            received: Cell::new(0),
            last_delivery: Cell::new(None),
            latency: RefCell::new(new_histogram()),
            out_of_order: Cell::new(0),
            unparsed: Cell::new(0),
            other_types: Cell::new(0),
            early_closes: RefCell::new(BTreeMap::new()),
            ended_early: Cell::new(0),
            stopping: Cell::new(false),
        });
        let mut sizes = vec![0u64; rooms];
        for i in 0..args.n {
            sizes[place(i, rooms, nodes).0] += 1;
        }
        let senders: Rc<RefCell<Vec<Option<SharedWriter>>>> =
            Rc::new(RefCell::new(vec![None; rooms]));
        let stats = Rc::new(ConnectStats::default());
        let mut connected_all = true;
        for (k, addr) in addrs.iter().enumerate() {
            let members: Rc<Vec<usize>> = Rc::new(
                (0..args.n)
                    .filter(|i| place(*i, rooms, nodes).1 == k)
                    .collect(),
            );
            let path = {
                let members = members.clone();
                Rc::new(move |j: usize| {
                    let i = members[j];
                    let room = place(i, rooms, nodes).0;
                    format!("/ws?room={}&name=m{i}", room_name(room))
                })
            };
            let on_connected = {
                let (members, shared, senders) = (members.clone(), shared.clone(), senders.clone());
                Rc::new(move |j: usize, rd, wr| {
                    let i = members[j];
                    let room = place(i, rooms, nodes).0;
                    let wr = Rc::new(Mutex::new(wr));
                    let sender = i < rooms;
                    if sender {
                        if let Some(slot) = senders.borrow_mut().get_mut(room) {
                            *slot = Some(wr.clone());
                        }
                    }
                    tokio::task::spawn_local(member(rd, wr, room, sender, shared.clone()));
                })
            };
            let connecting = connect_many(
                *addr,
                members.len(),
                args.concurrency,
                Rc::new(Vec::new()),
                path,
                Membership::V1,
                on_connected,
                stats.clone(),
            );
            connected_all &= tokio::time::timeout_at(ctx.deadline, connecting)
                .await
                .is_ok();
        }
        connected_all &= stats.connected.get() == args.n;
        let senders: Vec<_> = senders.borrow_mut().drain(..).collect();
        connected_all &= senders.iter().all(Option::is_some);
        RoomsLoad {
            rooms,
            sizes,
            shared,
            senders,
            stats,
            connected_all,
        }
    }

    /// Sends `args.m` messages round robin over the rooms, each room with at most
    /// `args.window` in flight (and at most `args.rate` a second in all, when set), then waits
    /// for the deliveries (up to `args.wait_ms`).
    pub async fn send(&self, ctx: &Ctx, args: &FanoutArgs) -> RoomsResult {
        let shared = &self.shared;
        let mut sent = 0u64;
        let mut expected = 0u64;
        let mut timed_out = !self.connected_all;
        let mut send_error = None;
        let start = Instant::now();
        if self.connected_all {
            eprintln!(
                "rooms: {} members in {} rooms joined; sending {} messages",
                args.n, self.rooms, args.m
            );
            let mut text = Vec::with_capacity(32);
            'send: for k in 0..args.m {
                let room = k % self.rooms;
                while shared.in_flight[room].get() >= args.window {
                    if shared.ended_early.get() > 0 {
                        break 'send;
                    }
                    let wait = shared.progress.notified();
                    if tokio::time::timeout_at(ctx.deadline, wait).await.is_err() {
                        timed_out = true;
                        break 'send;
                    }
                }
                if args.rate > 0.0 {
                    let at = start + Duration::from_secs_f64(k as f64 / args.rate);
                    tokio::time::sleep_until(at.min(ctx.deadline)).await;
                }
                let Some(writer) = &self.senders[room] else {
                    break;
                };
                text.clear();
                let t = Instant::now().duration_since(shared.base).as_nanos();
                let _ = write!(text, "t={t}");
                if let Err(e) = writer.lock().await.text(&text).await {
                    send_error = Some(e.to_string());
                    break;
                }
                shared.in_flight[room].set(shared.in_flight[room].get() + 1);
                sent += 1;
                expected += self.sizes[room];
                if Instant::now() >= ctx.deadline {
                    timed_out = true;
                    break;
                }
            }
            let limit = (Instant::now() + Duration::from_millis(args.wait_ms)).min(ctx.deadline);
            while shared.received.get() < expected && shared.ended_early.get() == 0 {
                let wait = shared.progress.notified();
                if tokio::time::timeout_at(limit, wait).await.is_err() {
                    break;
                }
            }
        } else {
            eprintln!(
                "rooms: only {} of {} members joined",
                self.stats.connected.get(),
                args.n
            );
        }
        shared.stopping.set(true);
        let span =
            |b: Option<Instant>| b.map_or(Duration::ZERO, |b| b.saturating_duration_since(start));
        let ok = !timed_out
            && send_error.is_none()
            && sent == args.m as u64
            && shared.received.get() == expected
            && shared.ended_early.get() == 0;
        RoomsResult {
            sent,
            expected,
            ok,
            timed_out,
            send_error,
            ack_duration: span(shared.last_ack.get()),
            delivery_duration: span(shared.last_delivery.get()),
        }
    }

    /// The report; `server_cpu` is the nodes' CPU time over the send.
    pub fn report(&self, args: &FanoutArgs, r: &RoomsResult, server_cpu: Duration) -> Value {
        let shared = &self.shared;
        let rate = |count: u64, d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                (count as f64 / d.as_secs_f64()).round()
            }
        };
        let received = shared.received.get();
        let per = |total: f64, count: u64| {
            if count == 0 {
                0.0
            } else {
                (total / count as f64).round()
            }
        };
        json!({
            "n": args.n,
            "m": args.m,
            "rooms": self.rooms,
            "members_per_room": { "min": self.sizes.iter().min(), "max": self.sizes.iter().max() },
            "window_per_room": args.window,
            "rate_limit": args.rate,
            "complete": r.ok,
            "timed_out": r.timed_out,
            "connect": self.stats.json(),
            "sent": r.sent,
            "send_error": r.send_error,
            "acknowledged": shared.acked.get(),
            "expected": r.expected,
            "received": received,
            "lost": r.expected.saturating_sub(received),
            "out_of_order": shared.out_of_order.get(),
            "unparsed": shared.unparsed.get(),
            "other_types": shared.other_types.get(),
            "early_closes": *shared.early_closes.borrow(),
            "ended_early": shared.ended_early.get(),
            "messages_per_s": rate(shared.acked.get(), r.ack_duration),
            "deliveries_per_s": rate(received, r.delivery_duration),
            "duration_ms": ms(r.delivery_duration),
            "latency": hist_json(&shared.latency.borrow()),
            "server_cpu_ms": ms(server_cpu),
            "server_cpu_ns_per_message": per(server_cpu.as_nanos() as f64, r.sent),
            "server_cpu_ns_per_delivery": per(server_cpu.as_nanos() as f64, received),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_alternate_their_members_and_senders_over_the_nodes() {
        // 3 rooms, 2 nodes: senders are members 0, 1, 2 on nodes 0, 1, 0.
        let placed: Vec<(usize, usize)> = (0..6).map(|i| place(i, 3, 2)).collect();
        assert_eq!(placed, [(0, 0), (1, 1), (2, 0), (0, 1), (1, 0), (2, 1)]);
        // Every room has a member on each node.
        for room in 0..3 {
            let nodes: Vec<usize> = placed.iter().filter(|p| p.0 == room).map(|p| p.1).collect();
            assert_eq!(nodes.len(), 2);
            assert_ne!(nodes[0], nodes[1]);
        }
    }
}
