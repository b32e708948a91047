// The refusal rules, for both clients: after an attempt that never opened, the client asks
// the server why with a plain GET of the same URL, and 400/403 stop with the reason, 401
// asks getToken once, 426 (the upgrade would be admitted)/429/503 back off. Driven through a fake WebSocket, a fake fetch
// answered by hand and a fake clock. Never sleeps.

import { test } from "node:test";
import assert from "node:assert/strict";

import { connect, connectRooms, PROBE_PROTOCOL_HEADER, PROBE_TIMEOUT_MS } from "../wsgrace.js";
import { fakeFetch, fakeWebSocket, FakeClock, flush, record } from "./fakes.mjs";

const KINDS = {
  v1: (o) => connect({ room: "r", ...o }),
  v2: (o) => connectRooms({ rooms: ["a", "b"], idPrefix: "t", ...o }),
};

function setup(kind, options = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const clock = new FakeClock();
  const probe = fakeFetch();
  const client = KINDS[kind]({
    url: "ws://chat.test/ws",
    name: "ann",
    WebSocketImpl: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    fetch: probe.fetch,
    ...options,
  });
  const rec = record(client);
  return { client, sockets, clock, probe, rec, last: () => sockets.at(-1) };
}

for (const kind of ["v1", "v2"]) {
  test(`${kind}: a refused upgrade is probed with a plain GET of the same URL over http`, async () => {
    const { probe, last } = setup(kind, { token: "tok" });
    const url = last().url;
    last().closed(1006, "", false);
    assert.equal(probe.calls.length, 1);
    assert.equal(probe.calls[0].url, url.replace(/^ws:/, "http:"));
    assert.equal(probe.calls[0].init.method, "GET");
    const named = probe.calls[0].init.headers?.[PROBE_PROTOCOL_HEADER];
    assert.equal(named, kind === "v2" ? "wsgrace.v2" : undefined);
  });

  for (const [status, body] of [[400, "name must be 1-64 characters of [A-Za-z0-9_.-]\n"], [403, "forbidden: room b not granted\n"]]) {
    test(`${kind}: ${status} stops with the reason; no further attempt`, async () => {
      const { client, sockets, clock, probe, rec, last } = setup(kind);
      last().closed(1006, "", false);
      assert.equal(client.state, "reconnecting");
      probe.calls[0].answer(status, body);
      await flush();
      assert.equal(client.state, "closed");
      const [refused] = rec.of("refused");
      assert.equal(refused.status, status);
      assert.equal(refused.reason, body.trim());
      assert.equal(refused.next.action, "stop");
      clock.advance(60000);
      assert.equal(sockets.length, 1);
    });
  }

  for (const status of [426, 429, 503]) {
    test(`${kind}: ${status} backs off and retries, and keeps probing while refused`, async () => {
      const { client, sockets, clock, probe, rec, last } = setup(kind);
      last().closed(1006, "", false);
      probe.calls[0].answer(status, "draining\n");
      await flush();
      assert.equal(client.state, "reconnecting");
      assert.deepEqual(rec.of("refused").map((r) => [r.status, r.next.action]), [[status, "backoff"]]);
      const delay = rec.of("close")[0].next.delayMs;
      clock.advance(delay - 1);
      assert.equal(sockets.length, 1, "not before the backoff");
      clock.advance(1);
      assert.equal(sockets.length, 2);
      last().closed(1006, "", false);
      assert.equal(probe.calls.length, 2);
    });
  }

  test(`${kind}: the next attempt waits for the probe's answer`, async () => {
    const { sockets, clock, probe, last } = setup(kind);
    last().closed(1006, "", false);
    clock.advance(10000); // the backoff ran out; the probe has not answered
    assert.equal(sockets.length, 1);
    probe.calls[0].answer(503, "");
    await flush();
    assert.equal(sockets.length, 2, "opens once the answer says back off");
  });

  test(`${kind}: a probe without an answer (server down, or no answer in time) backs off`, async () => {
    const { sockets, clock, probe, last, rec } = setup(kind);
    last().closed(1006, "", false);
    probe.calls[0].fail();
    await flush();
    assert.deepEqual(rec.of("refused"), [], "nothing to report without a status");
    clock.advance(10000);
    assert.equal(sockets.length, 2);
    last().closed(1006, "", false); // this probe never answers
    clock.advance(PROBE_TIMEOUT_MS);
    await flush();
    assert.equal(sockets.length, 3);
  });

  test(`${kind}: 401 asks getToken once and reconnects at once with the new token; a second 401 stops`, async () => {
    const tokens = [];
    const { client, sockets, clock, probe, rec, last } = setup(kind, {
      token: "old",
      getToken: async () => {
        tokens.push("new");
        return "new";
      },
    });
    last().closed(1006, "", false);
    probe.calls[0].answer(401, "unauthorized: token expired\n");
    await flush();
    await flush();
    assert.equal(tokens.length, 1);
    assert.equal(sockets.length, 2, "at once, not after the backoff");
    assert.equal(last().query.token, "new");
    assert.deepEqual(rec.of("refused").map((r) => r.next.action), ["token"]);
    last().closed(1006, "", false);
    clock.advance(rec.of("close").at(-1).next.delayMs); // the backoff, not the probe's timeout
    probe.calls[1].answer(401, "unauthorized: bad signature\n");
    await flush();
    assert.equal(client.state, "closed");
    assert.deepEqual(rec.of("refused").map((r) => [r.next.action, r.reason]), [
      ["token", "unauthorized: token expired"],
      ["stop", "unauthorized: bad signature"],
    ]);
    clock.advance(60000);
    await flush();
    assert.equal(sockets.length, 2);
  });

  test(`${kind}: 401 without getToken stops with the reason`, async () => {
    const { client, probe, rec, last } = setup(kind, { token: "bad" });
    last().closed(1006, "", false);
    probe.calls[0].answer(401, "unauthorized: missing token");
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(rec.of("refused")[0].reason, "unauthorized: missing token");
  });

  test(`${kind}: 401 and getToken gives no token: stop`, async () => {
    const { client, sockets, probe, rec, last } = setup(kind, { token: "old", getToken: async () => null });
    last().closed(1006, "", false);
    probe.calls[0].answer(401, "unauthorized: expired");
    await flush();
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(sockets.length, 1);
    assert.deepEqual(rec.of("refused").map((r) => r.next.action), ["token", "stop"]);
  });

  test(`${kind}: a welcome resets the one 401 retry`, async () => {
    const { sockets, clock, probe, last } = setup(kind, { token: "t", getToken: async () => "t2" });
    last().closed(1006, "", false);
    probe.calls[0].answer(401, "");
    await flush();
    await flush();
    assert.equal(sockets.length, 2);
    last().open();
    last().receive(kind === "v1" ? { type: "welcome", room: "r", name: "ann", epoch: "e", seq: 0 } : { type: "hello", name: "ann" });
    last().closed(1006, "", false); // opened: no probe, plain backoff
    assert.equal(probe.calls.length, 1);
    clock.advance(10000);
    await flush();
    last().closed(1006, "", false);
    probe.calls[1].answer(401, "");
    await flush();
    await flush();
    assert.equal(sockets.length, 4, "asked getToken again and reconnected");
  });

  test(`${kind}: a socket that had opened is not probed; close() during a probe ignores its answer`, async () => {
    const { client, sockets, clock, probe, last } = setup(kind);
    last().open();
    last().closed(1006, "", false);
    assert.equal(probe.calls.length, 0, "it opened: not a refused upgrade");
    clock.advance(10000);
    last().closed(1006, "", false);
    client.close();
    probe.calls[0].answer(503, "");
    await flush();
    clock.advance(60000);
    assert.equal(client.state, "closed");
    assert.equal(sockets.length, 2);
  });
}

for (const kind of ["v1", "v2"]) {
  test(`${kind}: the probe calls fetch unbound, as a browser's fetch requires ("Illegal invocation")`, async () => {
    const probe = fakeFetch();
    const receivers = [];
    // Like window.fetch: a call with any receiver but the global object (or none) throws.
    function strictFetch(url, init) {
      receivers.push(this);
      if (this !== undefined && this !== globalThis) throw new TypeError("Illegal invocation");
      return probe.fetch(url, init);
    }
    const { client, last } = setup(kind, { fetch: strictFetch });
    last().closed(1006, "", false);
    assert.equal(probe.calls.length, 1, "the probe reached fetch");
    probe.calls[0].answer(400, "name must be 1-64 characters of [A-Za-z0-9_.-]\n");
    await flush();
    assert.equal(client.state, "closed", "the refusal stopped the client");
    assert.ok(receivers.every((r) => r === undefined || r === globalThis), "called unbound");
  });
}

test("retryNow() while the refusal probe is under way waits for its answer: a 400 still stops", async () => {
  const { client, sockets, probe, last } = setup("v1");
  last().closed(1006, "", false);
  assert.equal(client.retryNow(), true);
  assert.equal(sockets.length, 1, "no attempt before the probe answered");
  probe.calls[0].answer(400, "name must be 1-64 characters of [A-Za-z0-9_.-]\n");
  await flush();
  assert.equal(client.state, "closed");
  assert.equal(sockets.length, 1);
});

test("retryNow() while the refusal probe is under way: a 503 answer opens at once", async () => {
  const { client, sockets, probe, last } = setup("v1");
  last().closed(1006, "", false);
  assert.equal(client.retryNow(), true);
  probe.calls[0].answer(503, "draining\n");
  await flush();
  assert.equal(sockets.length, 2, "the attempt brought forward started once the probe answered");
  assert.equal(client.state, "reconnecting");
});
