// The whole client (connect / WsgraceClient) driven through a fake WebSocket and a fake
// clock: what the app sees, and which URL each reconnect opens, when. Never sleeps.

import { test } from "node:test";
import assert from "node:assert/strict";

import { connect } from "../wsgrace.js";
import { fakeWebSocket, FakeClock, flush, record, randoms } from "./fakes.mjs";

/** A client on a fake socket and clock; random() = 0.5 unless given. */
function setup(options = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const clock = new FakeClock();
  const client = connect({
    url: "ws://chat.test/ws",
    room: "r",
    name: "alice",
    WebSocketImpl: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    fetch: null, // no refusal probe: refused upgrades are tested with a fake fetch below
    ...options,
  });
  const rec = record(client);
  const last = () => sockets.at(-1);
  return { client, sockets, clock, rec, last };
}

const welcome = (fields) => ({ type: "welcome", room: "r", name: "alice", epoch: "e1", seq: 0, ...fields });
const msg = (seq, text = `m${seq}`, from = "bob") => ({ type: "message", room: "r", from, text, seq });

test("welcome → messages → going_away → 1001 → resume with since/epoch → replay with duplicates: each seq once, in order", () => {
  const { client, sockets, clock, rec, last } = setup();
  assert.equal(client.state, "connecting");
  assert.equal(sockets.length, 1);
  assert.deepEqual(last().query, { room: "r", name: "alice" }, "nothing to resume on the first connect");

  last().open();
  assert.equal(client.send("too early"), false, "not open before the welcome");
  last().receive(welcome({ seq: 3 }));
  assert.equal(client.state, "open");
  assert.equal(rec.of("welcome").length, 1);

  for (const seq of [4, 5, 5, 6, 4]) last().receive(msg(seq));
  assert.deepEqual(rec.seqs(), [4, 5, 6]);
  assert.deepEqual(rec.of("message")[0], { room: "r", from: "bob", text: "m4", seq: 4 });

  assert.equal(client.send("hi"), true);
  assert.deepEqual(last().sent, ["hi"]);

  last().receive({ type: "going_away", reconnect_after_ms: 1200 });
  assert.deepEqual(rec.of("going_away"), [{ reconnectAfterMs: 1200 }]);
  last().closed(1001, "server shutting down", true);
  assert.equal(client.state, "reconnecting");
  const [close] = rec.of("close");
  assert.equal(close.code, 1001);
  assert.equal(close.reason, "server shutting down");
  assert.equal(close.wasClean, true);
  assert.equal(close.opened, true);
  assert.equal(close.welcomed, true);
  assert.equal(close.next.action, "reconnect");
  assert.equal(close.next.delayMs, 1200, "going_away's delay, not the backoff");
  assert.equal(client.send("lost"), false, "nothing is queued while reconnecting");

  clock.advance(1199);
  assert.equal(sockets.length, 1, "not before reconnect_after_ms");
  clock.advance(1);
  assert.equal(sockets.length, 2);
  assert.deepEqual(last().query, { room: "r", name: "alice", since: "6", epoch: "e1" });

  last().open();
  last().receive(welcome({ seq: 9, resumed: true, missed: 3 }));
  assert.equal(client.state, "open");
  assert.deepEqual(rec.of("resumed"), [{ missed: 3 }]);
  for (const seq of [5, 6, 7, 7, 8, 6, 9, 10, 9]) last().receive(msg(seq));
  assert.deepEqual(rec.seqs(), [4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(rec.of("gap"), []);
  assert.deepEqual(rec.states(), ["open", "reconnecting", "open"]);
  assert.equal(client.lastSeq, 10);
  assert.equal(client.epoch, "e1");
});

test("resumed:false after messages were seen emits gap and continues after the welcome's seq", () => {
  const { client, clock, rec, last } = setup();
  last().open();
  last().receive(welcome({ seq: 3 }));
  last().receive(msg(4));
  last().receive(msg(5));
  last().closed(1006, "", false);
  assert.equal(client.state, "reconnecting");
  assert.equal(rec.of("close")[0].next.delayMs, 250, "random(0, 500) with random 0.5");
  clock.advance(250);
  assert.deepEqual(last().query, { room: "r", name: "alice", since: "5", epoch: "e1" });

  last().open();
  last().receive(welcome({ seq: 20, resumed: false }));
  assert.deepEqual(rec.of("gap"), [{ previousEpoch: "e1", previousSeq: 5, epoch: "e1", seq: 20 }]);
  assert.deepEqual(rec.of("resumed"), []);
  for (const seq of [20, 21, 22]) last().receive(msg(seq));
  assert.deepEqual(rec.seqs(), [4, 5, 21, 22]);
});

test("an epoch message resets epoch and seq: seqs from 1 are delivered, and the next resume uses the new epoch", () => {
  const { clock, rec, last } = setup();
  last().open();
  last().receive(welcome({ seq: 10 }));
  last().receive(msg(11));
  last().receive({ type: "epoch", room: "r", epoch: "e2", seq: 0 });
  assert.deepEqual(rec.of("epoch"), [{ room: "r", epoch: "e2", seq: 0 }]);
  last().receive(msg(1));
  last().receive(msg(2));
  last().receive(msg(2));
  assert.deepEqual(rec.seqs(), [11, 1, 2]);
  last().closed(1012, "restart", true);
  clock.advance(10000);
  assert.deepEqual(last().query, { room: "r", name: "alice", since: "2", epoch: "e2" });
});

test("1008 from the server: closed, reported, no reconnect", () => {
  const { client, sockets, clock, rec, last } = setup();
  last().open();
  last().receive(welcome());
  last().closed(1008, "rate limit", true);
  assert.equal(client.state, "closed");
  const [close] = rec.of("close");
  assert.deepEqual([close.code, close.reason, close.wasClean, close.next.action], [1008, "rate limit", true, "stop"]);
  assert.deepEqual(clock.pending(), []);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("1000 from the server is a normal end: closed, no reconnect", () => {
  const { client, sockets, clock, last } = setup();
  last().open();
  last().receive(welcome());
  last().closed(1000, "bye", true);
  assert.equal(client.state, "closed");
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("the app's close(): closed at once, the socket closed with 1000, its close reported, no reconnect", () => {
  const { client, sockets, clock, rec, last } = setup();
  last().open();
  last().receive(welcome());
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(last().closeCalls, [{ code: 1000, reason: "" }]);
  last().closed(1000, "", true);
  assert.equal(rec.of("close").length, 1);
  assert.equal(rec.of("close")[0].next.action, "stop");
  clock.advance(60000);
  assert.equal(sockets.length, 1);
  assert.deepEqual(rec.states(), ["open", "closed"]);
  assert.equal(client.send("x"), false);
});

test("the app's close() during a backoff wait cancels the reconnect", () => {
  const { client, sockets, clock, last } = setup();
  last().open();
  last().receive(welcome());
  last().closed(1006, "", false);
  assert.equal(clock.pending().length, 1);
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(clock.pending(), []);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("a refused upgrade (1006, never opened) backs off, growing until a welcome resets it", () => {
  const { client, sockets, clock, rec, last } = setup({ random: () => 0.999 });
  const delays = [];
  for (let i = 0; i < 6; i++) {
    last().closed(1006, "", false); // the upgrade was refused: no open, no welcome
    const close = rec.of("close").at(-1);
    assert.equal(close.opened, false);
    delays.push(close.next.delayMs);
    assert.equal(client.state, "reconnecting");
    clock.advance(close.next.delayMs);
  }
  assert.deepEqual(delays, [499, 999, 1998, 3996, 7992, 9990]);
  assert.equal(sockets.length, 7);
  last().open();
  last().receive(welcome());
  last().closed(1006, "", false);
  assert.equal(rec.of("close").at(-1).next.delayMs, 499, "reset by the welcome");
});

test("token expiry (3000): getToken is called before the reconnect and its token is in the URL", async () => {
  const calls = [];
  const { clock, rec, last } = setup({
    token: "t1",
    getToken: async () => {
      calls.push(clock.now);
      return "t2";
    },
  });
  assert.equal(last().query.token, "t1", "the given token first; getToken not called yet");
  assert.deepEqual(calls, []);
  last().open();
  last().receive(welcome({ seq: 4 }));
  last().closed(3000, "token expired", true);
  const [close] = rec.of("close");
  assert.equal(close.next.freshToken, true);
  assert.ok(close.next.delayMs <= 500, "at once, with jitter ≤ base");
  clock.advance(close.next.delayMs);
  await flush();
  assert.equal(calls.length, 1);
  assert.deepEqual(last().query, { room: "r", name: "alice", token: "t2", since: "4", epoch: "e1" });
});

test("getToken runs before the first connect when no token is given, and before every reconnect", async () => {
  let n = 0;
  const { sockets, clock, last } = setup({ getToken: async () => `tok${++n}` });
  assert.equal(sockets.length, 0, "waits for the token");
  await flush();
  assert.equal(last().query.token, "tok1");
  last().open();
  last().receive(welcome());
  last().closed(1001, "", true);
  clock.advance(10000);
  await flush();
  assert.equal(last().query.token, "tok2");
});

test("a failing getToken reports an error and backs off", async () => {
  let fail = true;
  const { sockets, clock, rec } = setup({
    getToken: async () => {
      if (fail) throw new Error("auth server down");
      return "ok";
    },
  });
  await flush();
  assert.equal(sockets.length, 0);
  assert.deepEqual(rec.of("error"), [{ code: "token", text: "auth server down" }]);
  assert.equal(clock.pending().length, 1);
  fail = false;
  clock.advance(10000);
  await flush();
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].query.token, "ok");
});

test("3000 without getToken: closed (the old token would be refused)", () => {
  const { client, clock, sockets, last } = setup({ token: "t1" });
  last().open();
  last().receive(welcome());
  last().closed(3000, "token expired", true);
  assert.equal(client.state, "closed");
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("server error frames become error events; unknown types, bad JSON and a second welcome are ignored", () => {
  const { client, rec, last } = setup();
  last().open();
  last().receive(welcome({ seq: 1 }));
  last().receive({ type: "error", code: "unavailable", text: "broker down" });
  last().receive({ type: "presence", who: ["bob"] });
  last().receive("not json");
  last().receive("42");
  last().receive(welcome({ seq: 99, resumed: false }));
  last().receive(msg(2));
  assert.deepEqual(rec.of("error"), [{ code: "unavailable", text: "broker down" }]);
  assert.equal(rec.of("welcome").length, 1);
  assert.deepEqual(rec.seqs(), [2]);
  assert.equal(client.state, "open");
});

test("without a name, reconnects keep the name the server picked", () => {
  const { client, clock, last } = setup({ name: undefined });
  assert.deepEqual(last().query, { room: "r" });
  last().open();
  last().receive(welcome({ name: "guest-17" }));
  assert.equal(client.name, "guest-17");
  last().closed(1006, "", false);
  clock.advance(10000);
  assert.equal(last().query.name, "guest-17");
});

test("reconnect() after closed resumes where the app stopped", () => {
  const { client, sockets, rec, last } = setup();
  last().open();
  last().receive(welcome({ seq: 2 }));
  last().receive(msg(3));
  last().closed(1008, "slow consumer", true);
  assert.equal(client.state, "closed");
  client.reconnect();
  assert.equal(client.state, "reconnecting");
  assert.equal(sockets.length, 2);
  assert.deepEqual(last().query, { room: "r", name: "alice", since: "3", epoch: "e1" });
  last().open();
  last().receive(welcome({ seq: 4, resumed: true, missed: 1 }));
  last().receive(msg(3));
  last().receive(msg(4));
  assert.deepEqual(rec.seqs(), [3, 4]);
});

test("events from a socket already left behind are ignored", () => {
  const { sockets, clock, rec, last } = setup();
  last().open();
  last().receive(welcome());
  const old = last();
  const oldOnMessage = old.onmessage;
  old.closed(1006, "", false);
  clock.advance(10000);
  assert.equal(sockets.length, 2);
  assert.equal(old.onmessage, null, "handlers detached");
  oldOnMessage?.({ data: JSON.stringify(msg(1)) });
  assert.deepEqual(rec.seqs(), []);
});

test("the initial state is connecting; a first attempt that fails turns it to reconnecting", () => {
  const { client, rec, last } = setup({ random: randoms(0) });
  assert.equal(client.state, "connecting");
  last().closed(1006, "", false);
  assert.deepEqual(rec.states(), ["reconnecting"]);
});

test("retryNow() while waiting out the backoff opens at once, resuming; not while an attempt is under way", () => {
  const { client, sockets, clock, last } = setup();
  last().open();
  last().receive(welcome({ seq: 5 }));
  assert.equal(client.retryNow(), false, "open: nothing to retry");
  last().closed(1006);
  assert.equal(client.state, "reconnecting");
  assert.equal(sockets.length, 1, "the backoff runs");
  assert.equal(client.retryNow(), true);
  assert.equal(sockets.length, 2, "the next attempt started at once");
  assert.deepEqual(last().query, { room: "r", name: "alice", since: "5", epoch: "e1" });
  assert.equal(client.retryNow(), false, "an attempt is under way");
  assert.equal(sockets.length, 2);
  clock.advance(60_000);
  assert.equal(sockets.length, 2, "the cancelled backoff timer opens nothing");
  last().closed(1006);
  clock.advance(0);
  assert.equal(client.retryNow(), true);
  assert.equal(sockets.length, 3);
  last().open();
  last().receive(welcome({ seq: 5, resumed: true, missed: 0 }));
  assert.equal(client.state, "open");
});

test("retryNow() from closed reconnects", () => {
  const { client, sockets, last } = setup();
  last().open();
  last().receive(welcome({ seq: 1 }));
  last().closed(1008, "slow consumer", true);
  assert.equal(client.state, "closed");
  assert.equal(client.retryNow(), true);
  assert.equal(client.state, "reconnecting");
  assert.equal(sockets.length, 2);
});
