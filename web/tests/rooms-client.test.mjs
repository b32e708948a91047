// The many-rooms client (connectRooms / WsgraceRooms, subprotocol wsgrace.v2) driven through
// a fake WebSocket, a fake fetch and a fake clock: which frames it sends, what the app sees,
// which URL each reconnect opens, when. Never sleeps.

import { test } from "node:test";
import assert from "node:assert/strict";

import { connectRooms } from "../wsgrace.js";
import { fakeFetch, fakeWebSocket, FakeClock, flush, record } from "./fakes.mjs";

/** A client on a fake socket, fetch and clock; random() = 0.5; ids t-1, t-2, ... */
function setup(options = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const clock = new FakeClock();
  const probe = fakeFetch();
  const client = connectRooms({
    url: "ws://chat.test/ws",
    name: "ann",
    rooms: ["a", "b"],
    WebSocketImpl: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    fetch: probe.fetch,
    idPrefix: "t",
    ...options,
  });
  const rec = record(client);
  const last = () => sockets.at(-1);
  /** The frames the current socket sent since the last call. */
  let seen = new WeakMap();
  const sent = () => {
    const ws = last();
    const from = seen.get(ws) || 0;
    seen.set(ws, ws.sent.length);
    return ws.frames.slice(from);
  };
  /** Opens the current socket, says hello, answers its joins with `joined` (fields per room). */
  const connect = (joined = {}) => {
    last().open();
    last().receive({ type: "hello", name: "ann" });
    const joins = sent().filter((f) => f.type === "join");
    for (const j of joins) {
      last().receive({ type: "joined", room: j.room, epoch: "e1", seq: 0, ref: j.ref, ...(joined[j.room] || {}) });
    }
    return joins;
  };
  const messages = (room) => rec.of("message").filter((m) => m.room === room).map((m) => m.seq);
  return { client, sockets, clock, rec, last, sent, connect, messages, probe };
}

const msg = (room, seq, extra = {}) => ({ type: "message", room, from: "bob", text: `${room}${seq}`, seq, ts: 1700000000000 + seq, ...extra });

test("the upgrade offers wsgrace.v2 with name only; the hello opens it; each room is joined with a ref", () => {
  const { client, last, sent, rec } = setup({ rooms: [{ room: "a", last: 50 }, "b"], last: 10, token: "tok" });
  assert.deepEqual(last().protocols, ["wsgrace.v2"]);
  assert.deepEqual(last().query, { name: "ann", token: "tok" });
  assert.equal(client.state, "connecting");
  last().open();
  assert.deepEqual(sent(), [], "nothing before the hello");
  last().receive({ type: "hello", name: "ann" });
  assert.equal(client.state, "open");
  assert.deepEqual(rec.of("hello"), [{ name: "ann" }]);
  const joins = sent();
  assert.deepEqual(joins.map(({ type, room, last: k }) => ({ type, room, last: k })), [
    { type: "join", room: "a", last: 50 },
    { type: "join", room: "b", last: 10 },
  ]);
  assert.ok(joins.every((j) => typeof j.ref === "string" && j.ref.length <= 64));
  assert.deepEqual(client.rooms, ["a", "b"]);
  assert.equal(client.roomState("a").status, "joining");
  last().receive({ type: "joined", room: "a", epoch: "e1", seq: 3, ref: joins[0].ref });
  assert.deepEqual(rec.of("joined"), [{ room: "a", epoch: "e1", seq: 3, last: 50 }]);
  for (const seq of [2, 3, 3, 4]) last().receive(msg("a", seq));
  assert.deepEqual(rec.of("message").map((m) => m.seq), [2, 3, 4], "the recent messages, then live ones");
  assert.deepEqual(rec.of("message")[0], { room: "a", from: "bob", text: "a2", seq: 2, ts: 1700000000002 });
});

test("two busy rooms, a drop, a reconnect: each room resumes with its own since/epoch, no gap, no duplicate", () => {
  const { client, clock, last, sent, connect, messages, rec } = setup();
  connect({ a: { seq: 0 }, b: { epoch: "eb", seq: 10 } });
  for (const f of [msg("a", 1), msg("b", 11), msg("a", 2), msg("b", 12), msg("b", 11), msg("a", 3)]) last().receive(f);
  assert.deepEqual(messages("a"), [1, 2, 3]);
  assert.deepEqual(messages("b"), [11, 12]);

  last().receive({ type: "going_away", reconnect_after_ms: 700 });
  last().closed(1001, "server shutting down", true);
  assert.equal(client.state, "reconnecting");
  assert.equal(rec.of("close")[0].next.delayMs, 700);
  clock.advance(700);
  assert.deepEqual(last().query, { name: "ann" }, "no room, since or epoch in a v2 URL");
  last().open();
  last().receive({ type: "hello", name: "ann" });
  const joins = sent();
  assert.deepEqual(joins.map(({ room, since, epoch, last: k }) => ({ room, since, epoch, last: k })), [
    { room: "a", since: 3, epoch: "e1", last: undefined },
    { room: "b", since: 12, epoch: "eb", last: undefined },
  ]);
  // Both rooms were busy meanwhile: the replays interleave with live messages, with duplicates.
  last().receive({ type: "joined", room: "b", epoch: "eb", seq: 14, resumed: true, missed: 2, ref: joins[1].ref });
  last().receive(msg("b", 13));
  last().receive({ type: "joined", room: "a", epoch: "e1", seq: 5, resumed: true, missed: 2, ref: joins[0].ref });
  for (const f of [msg("a", 3), msg("a", 4), msg("b", 14), msg("a", 5), msg("b", 15), msg("a", 6), msg("b", 14), msg("a", 5)]) {
    last().receive(f);
  }
  assert.deepEqual(messages("a"), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(messages("b"), [11, 12, 13, 14, 15]);
  assert.deepEqual(rec.of("gap"), []);
  assert.deepEqual(rec.of("resumed"), [{ room: "b", missed: 2 }, { room: "a", missed: 2 }]);
  assert.deepEqual(client.roomState("a"), { status: "joined", epoch: "e1", seq: 6 });
});

test("resumed:false in one room is a gap for that room only", () => {
  const { clock, last, sent, connect, rec } = setup();
  connect();
  last().receive(msg("a", 1));
  last().receive(msg("b", 1));
  last().closed(1006, "", false);
  clock.advance(10000);
  last().open();
  last().receive({ type: "hello", name: "ann" });
  const [ja, jb] = sent();
  last().receive({ type: "joined", room: "a", epoch: "e1", seq: 1, resumed: true, missed: 0, ref: ja.ref });
  last().receive({ type: "joined", room: "b", epoch: "e2", seq: 40, resumed: false, ref: jb.ref });
  assert.deepEqual(rec.of("gap"), [{ room: "b", previousEpoch: "e1", previousSeq: 1, epoch: "e2", seq: 40 }]);
});

test("a publish has an id, is resent with the same id after a reconnect, and leaves the queue on its copy", () => {
  const { client, clock, last, sent, connect, rec } = setup();
  connect();
  const id = client.publish("a", "hello");
  assert.equal(id, "t-1");
  assert.deepEqual(sent(), [{ type: "publish", room: "a", text: "hello", id: "t-1" }]);
  assert.deepEqual(client.pending, [{ room: "a", id: "t-1", text: "hello" }]);
  last().closed(1006, "", false); // before its copy came
  assert.equal(client.publish("b", "queued meanwhile"), "t-2");
  clock.advance(10000);
  const joins = connect();
  assert.equal(joins.length, 2);
  const resent = sent();
  assert.deepEqual(resent, [
    { type: "publish", room: "a", text: "hello", id: "t-1" },
    { type: "publish", room: "b", text: "queued meanwhile", id: "t-2" },
  ]);
  last().receive(msg("a", 1, { from: "ann", text: "hello", id: "t-1" }));
  assert.deepEqual(rec.of("delivered"), [{ room: "a", id: "t-1", seq: 1 }]);
  assert.equal(rec.of("message")[0].id, "t-1");
  assert.deepEqual(client.pending, [{ room: "b", id: "t-2", text: "queued meanwhile" }]);
  last().closed(1006, "", false);
  clock.advance(10000);
  connect();
  assert.deepEqual(sent(), [{ type: "publish", room: "b", text: "queued meanwhile", id: "t-2" }], "only what is unconfirmed");
});

test("a resent publish the server already has is answered with ack: it leaves the queue, no second message", () => {
  const { client, clock, last, sent, connect, rec } = setup();
  connect();
  client.publish("a", "once");
  sent();
  last().closed(1006, "", false);
  clock.advance(10000);
  connect();
  assert.deepEqual(sent(), [{ type: "publish", room: "a", text: "once", id: "t-1" }]);
  last().receive({ type: "ack", room: "a", id: "t-1", seq: 9 });
  assert.deepEqual(rec.of("delivered"), [{ room: "a", id: "t-1", seq: 9, duplicate: true }]);
  assert.deepEqual(client.pending, []);
  last().closed(1006, "", false);
  clock.advance(10000);
  connect();
  assert.deepEqual(sent(), []);
});

test("unavailable for a publish: the app is told, the publish is retried with the same id after the delay", () => {
  const { client, clock, last, sent, connect, rec } = setup();
  connect();
  client.publish("a", "x");
  sent();
  last().receive({ type: "error", code: "unavailable", room: "a", id: "t-1", text: "broker unavailable" });
  const [err] = rec.of("error");
  assert.equal(err.code, "unavailable");
  assert.equal(err.request, "publish");
  assert.equal(err.retryInMs, 250);
  clock.advance(249);
  assert.deepEqual(sent(), []);
  clock.advance(1);
  assert.deepEqual(sent(), [{ type: "publish", room: "a", text: "x", id: "t-1" }]);
  last().receive(msg("a", 1, { from: "ann", text: "x", id: "t-1" }));
  assert.deepEqual(client.pending, []);
});

test("unavailable, then a reconnect before the retry: sent once on the new connection, the old timer is moot", () => {
  const { client, clock, last, sent, connect } = setup({ random: () => 0.99 });
  connect();
  client.publish("a", "x");
  sent();
  last().receive({ type: "error", code: "unavailable", room: "a", id: "t-1" });
  last().closed(1006, "", false); // backoff 495 ms < retry 495 ms: both timers pending
  clock.advance(495);
  connect();
  assert.deepEqual(sent(), [{ type: "publish", room: "a", text: "x", id: "t-1" }]);
  clock.advance(10000);
  assert.deepEqual(sent(), [], "not again when the retry timer fires");
});

test("join and leave while connected", () => {
  const { client, last, sent, connect, rec } = setup({ rooms: ["a"] });
  connect();
  assert.equal(client.join("c", { last: 5 }), true);
  assert.equal(client.join("c"), false, "already joining");
  assert.equal(client.join("no spaces"), false);
  const [j] = sent();
  assert.deepEqual({ type: j.type, room: j.room, last: j.last }, { type: "join", room: "c", last: 5 });
  last().receive({ type: "joined", room: "c", epoch: "ec", seq: 2, ref: j.ref });
  last().receive(msg("c", 2));
  assert.deepEqual(rec.of("message").map((m) => `${m.room}${m.seq}`), ["c2"]);
  assert.equal(client.leave("c"), true);
  const [l] = sent();
  assert.deepEqual({ type: l.type, room: l.room }, { type: "leave", room: "c" });
  last().receive(msg("c", 3));
  last().receive({ type: "left", room: "c", ref: l.ref });
  assert.deepEqual(rec.of("left"), [{ room: "c", unsent: [] }]);
  assert.deepEqual(rec.of("message").map((m) => `${m.room}${m.seq}`), ["c2"], "nothing of c after leave");
  assert.deepEqual(client.rooms, ["a"]);
  assert.equal(client.publish("c", "x"), null);
  assert.equal(client.leave("c"), false);
});

test("a join refused with forbidden gives the room up; with unavailable it is retried", () => {
  const { client, clock, last, sent, connect, rec } = setup({ rooms: ["a"] });
  connect();
  client.join("secret");
  client.join("busy");
  const [js, jb] = sent();
  last().receive({ type: "error", code: "forbidden", room: "secret", ref: js.ref, text: "room not granted" });
  last().receive({ type: "error", code: "unavailable", room: "busy", ref: jb.ref });
  assert.deepEqual(rec.of("error").map((e) => [e.code, e.room, e.request]), [
    ["forbidden", "secret", "join"],
    ["unavailable", "busy", "join"],
  ]);
  assert.deepEqual(client.rooms, ["a", "busy"]);
  clock.advance(250);
  const [again] = sent();
  assert.deepEqual({ type: again.type, room: again.room }, { type: "join", room: "busy" });
});

test("signal and presence: frames out, events in, per room", () => {
  const { client, last, sent, connect, rec } = setup();
  assert.equal(client.signal("a", "x"), false, "not before the room is joined");
  connect();
  assert.equal(client.signal("b", '{"typing":true}'), true);
  const ref = client.presence("b");
  assert.deepEqual(sent(), [
    { type: "signal", room: "b", text: '{"typing":true}' },
    { type: "presence", room: "b", ref },
  ]);
  last().receive({ type: "signal", room: "b", from: "bob", text: '{"typing":true}' });
  last().receive({ type: "presence", room: "b", members: [{ name: "ann", connections: 1 }], ref });
  last().receive({ type: "presence_join", room: "a", name: "bob" });
  last().receive({ type: "presence_leave", room: "a", name: "bob" });
  assert.deepEqual(rec.of("signal"), [{ room: "b", from: "bob", text: '{"typing":true}' }]);
  assert.deepEqual(rec.of("presence"), [{ room: "b", members: [{ name: "ann", connections: 1 }] }]);
  assert.deepEqual(rec.of("presence_join"), [{ room: "a", name: "bob" }]);
  assert.deepEqual(rec.of("presence_leave"), [{ room: "a", name: "bob" }]);
});

test("the epoch frame of one room resets that room only", () => {
  const { last, connect, messages, rec } = setup();
  connect();
  last().receive(msg("a", 1));
  last().receive(msg("b", 1));
  last().receive({ type: "epoch", room: "a", epoch: "e2", seq: 0 });
  last().receive(msg("a", 1));
  last().receive(msg("b", 1));
  assert.deepEqual(messages("a"), [1, 1]);
  assert.deepEqual(messages("b"), [1]);
  assert.deepEqual(rec.of("epoch"), [{ room: "a", epoch: "e2", seq: 0 }]);
});

test("no reconnect after a close with an app code (4000-4999), nor after 1008, 1003, 1009", () => {
  for (const code of [4000, 4001, 4999, 1008, 1003, 1009, 1002, 1000]) {
    const { client, sockets, clock, connect, last } = setup();
    connect();
    last().closed(code, "kicked", true);
    assert.equal(client.state, "closed", String(code));
    clock.advance(60000);
    assert.equal(sockets.length, 1, String(code));
  }
});

test("3000 token expired: a fresh token, then a reconnect that rejoins every room", async () => {
  let n = 0;
  const { clock, last, sent, connect } = setup({ token: "t0", getToken: async () => `t${++n}` });
  connect();
  last().receive(msg("a", 1));
  last().closed(3000, "token expired", true);
  clock.advance(500);
  await flush();
  assert.equal(last().query.token, "t1");
  last().open();
  last().receive({ type: "hello", name: "ann" });
  assert.deepEqual(sent().map((j) => [j.room, j.since]), [["a", 1], ["b", 0]]);
});

test("a server that does not agree to wsgrace.v2 (v1): error `protocol`, closed, no reconnect", () => {
  const { client, sockets, clock, last, rec } = setup();
  last().open(""); // no subprotocol in the 101
  assert.equal(client.state, "closed");
  assert.deepEqual(rec.of("error").map((e) => e.code), ["protocol"]);
  assert.deepEqual(last().closeCalls.length, 1);
  last().closed(1000, "", true);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("the name the server picked is kept for reconnects (the dedupe of ids is per name)", () => {
  const { client, clock, last } = setup({ name: undefined });
  assert.deepEqual(last().query, {});
  last().open();
  last().receive({ type: "hello", name: "guest-3" });
  assert.equal(client.name, "guest-3");
  last().closed(1006, "", false);
  clock.advance(10000);
  assert.deepEqual(last().query, { name: "guest-3" });
});

test("close() stops for good and keeps the queue; reconnect() rejoins and resends", () => {
  const { client, sockets, clock, last, sent, connect } = setup();
  connect();
  last().receive(msg("a", 4));
  client.publish("a", "kept");
  sent();
  client.close();
  assert.equal(client.state, "closed");
  assert.equal(client.publish("a", "x"), null);
  last().closed(1000, "", true);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
  client.reconnect();
  assert.equal(sockets.length, 2);
  last().open();
  last().receive({ type: "hello", name: "ann" });
  const [ja, jb] = sent();
  assert.deepEqual([ja.since, jb.since], [4, 0]);
  last().receive({ type: "joined", room: "a", epoch: "e1", seq: 4, resumed: true, missed: 0, ref: ja.ref });
  assert.deepEqual(sent(), [{ type: "publish", room: "a", text: "kept", id: "t-1" }]);
});
