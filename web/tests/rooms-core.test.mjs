// The pure core of many rooms over one connection (wsgrace.v2) and of the refusal probe:
// refusalStep, the URLs, RoomTracker, Outbox and RoomsCore. No socket, no timer.

import { test, describe } from "node:test";
import assert from "node:assert/strict";

import {
  buildRoomsUrl,
  Outbox,
  probeUrl,
  reasonLine,
  refusalStep,
  RoomsCore,
  RoomTracker,
} from "../wsgrace.js";
import { seeded } from "./fakes.mjs";

describe("refusalStep: what the plain GET of a refused upgrade answered", () => {
  const rows = [
    // [what, answer, ctx, expected action]
    ["400 bad name", { status: 400, reason: "name must be 1-64 characters" }, {}, "stop"],
    ["400 bad query (v2 with room)", { status: 400, reason: "bad_query" }, { canRefreshToken: true }, "stop"],
    ["403 room not granted", { status: 403, reason: "forbidden: room" }, { canRefreshToken: true }, "stop"],
    ["401 with getToken: ask it once", { status: 401, reason: "unauthorized: expired" }, { canRefreshToken: true }, "token"],
    ["401 again after asking", { status: 401 }, { canRefreshToken: true, askedToken: true }, "stop"],
    ["401 without getToken", { status: 401 }, { canRefreshToken: false }, "stop"],
    ["429 per-address limit", { status: 429 }, {}, "backoff"],
    ["503 draining", { status: 503, reason: "draining" }, {}, "backoff"],
    ["426 (the upgrade would pass)", { status: 426 }, {}, "backoff"],
    ["200", { status: 200 }, {}, "backoff"],
    ["404 (not a wsgrace server)", { status: 404 }, {}, "backoff"],
    ["no answer (server down)", null, {}, "backoff"],
    ["an answer without a status", {}, {}, "backoff"],
  ];
  for (const [what, answer, ctx, action] of rows) {
    test(`${what} → ${action}`, () => {
      const step = refusalStep(answer, ctx);
      assert.equal(step.action, action, JSON.stringify(step));
      assert.equal(typeof step.why, "string");
      if (answer && Number.isInteger(answer.status)) {
        assert.equal(step.status, answer.status);
        assert.equal(step.reason, answer.reason || `HTTP ${answer.status}`);
      }
    });
  }

  test("the probe asks the same URL over http(s); the reason is the body's first line", () => {
    assert.equal(probeUrl("ws://h:1/ws?name=a&token=t"), "http://h:1/ws?name=a&token=t");
    assert.equal(probeUrl("wss://h/ws?room=r"), "https://h/ws?room=r");
    assert.equal(reasonLine("\n  forbidden: room b not granted  \nmore"), "forbidden: room b not granted");
    assert.equal(reasonLine("x".repeat(500)).length, 200);
    assert.equal(reasonLine(undefined), "");
  });
});

describe("buildRoomsUrl", () => {
  test("name and token only; room, since and epoch never go in a v2 URL", () => {
    assert.equal(buildRoomsUrl("ws://h/ws", { name: "ann", token: "t.t.t" }), "ws://h/ws?name=ann&token=t.t.t");
    assert.equal(buildRoomsUrl("http://h/ws?room=x&since=3&epoch=e&k=1", { name: "ann" }), "ws://h/ws?k=1&name=ann");
    assert.equal(buildRoomsUrl("wss://h/ws", {}), "wss://h/ws");
  });
});

describe("RoomTracker", () => {
  test("join fields: `last` until the room was joined, then since/epoch", () => {
    const t = new RoomTracker();
    assert.deepEqual(t.joinFields(50), { last: 50 });
    assert.deepEqual(t.joinFields(0), {});
    assert.deepEqual(t.joinFields(undefined), {});
    assert.deepEqual(t.joinFields(5000), { last: 1000 });
    t.onJoined({ epoch: "e1", seq: 7 }, {});
    assert.deepEqual(t.joinFields(50), { since: 7, epoch: "e1" });
  });

  test("a `last` join delivers the recent messages (seq ≤ joined seq), then live ones, each once", () => {
    const t = new RoomTracker();
    assert.deepEqual(t.onJoined({ epoch: "e1", seq: 10 }, { last: 3 }), { kind: "fresh" });
    assert.deepEqual(t.joinFields(3), { since: 10, epoch: "e1" }, "none delivered yet: resume from the joined seq");
    assert.deepEqual([8, 9, 9, 10, 8, 11, 12, 11].filter((seq) => t.onMessage({ seq })), [8, 9, 10, 11, 12]);
    assert.deepEqual(t.joinFields(3), { since: 12, epoch: "e1" });
  });

  test("a `last` join cut short resumes from the last recent message delivered", () => {
    const t = new RoomTracker();
    t.onJoined({ epoch: "e1", seq: 10 }, { last: 3 });
    t.onMessage({ seq: 8 });
    assert.deepEqual(t.joinFields(3), { since: 8, epoch: "e1" });
  });

  test("joined after a resume (table)", () => {
    const rows = [
      // [what, joined frame, expected outcome, seqs in → delivered]
      ["resumed", { epoch: "e1", seq: 9, resumed: true, missed: 4 }, { kind: "resumed", missed: 4 }, [5, 6, 6, 7, 8, 9, 10], [6, 7, 8, 9, 10]],
      ["refused, trimmed", { epoch: "e1", seq: 50, resumed: false }, { kind: "gap", previousEpoch: "e1", previousSeq: 5, epoch: "e1", seq: 50 }, [50, 51], [51]],
      ["refused, new epoch", { epoch: "e2", seq: 1, resumed: false }, { kind: "gap", previousEpoch: "e1", previousSeq: 5, epoch: "e2", seq: 1 }, [1, 2], [2]],
      ["refused, nothing missed", { epoch: "e1", seq: 5, resumed: false }, { kind: "not_resumed" }, [5, 6], [6]],
      ["no `resumed` field", { epoch: "e1", seq: 8 }, { kind: "gap", previousEpoch: "e1", previousSeq: 5, epoch: "e1", seq: 8 }, [9], [9]],
    ];
    for (const [what, joined, outcome, incoming, delivered] of rows) {
      const t = new RoomTracker();
      t.onJoined({ epoch: "e1", seq: 3 }, {});
      t.onMessage({ seq: 4 });
      t.onMessage({ seq: 5 });
      const asked = t.joinFields(50);
      assert.deepEqual(asked, { since: 5, epoch: "e1" }, what);
      assert.deepEqual(t.onJoined(joined, asked), outcome, what);
      assert.deepEqual(incoming.filter((seq) => t.onMessage({ seq })), delivered, what);
    }
  });

  test("an epoch frame resets epoch and seq", () => {
    const t = new RoomTracker();
    t.onJoined({ epoch: "e1", seq: 3 }, {});
    t.onEpoch({ epoch: "e2", seq: 0 });
    assert.deepEqual(t.joinFields(5), { since: 0, epoch: "e2" });
    assert.deepEqual([1, 1, 2].filter((seq) => t.onMessage({ seq })), [1, 2]);
  });
});

describe("Outbox", () => {
  test("ids are prefix-n, unique, and valid names", () => {
    const o = new Outbox("k3x9");
    const ids = [o.add("a", "1").id, o.add("b", "2").id, o.add("a", "3").id];
    assert.deepEqual(ids, ["k3x9-1", "k3x9-2", "k3x9-3"]);
    for (const id of ids) assert.match(id, /^[A-Za-z0-9_.-]{1,64}$/);
    assert.throws(() => new Outbox("bad prefix"), TypeError);
    assert.throws(() => new Outbox("x".repeat(41)), TypeError);
  });

  test("take sends each entry once per connection, per room, oldest first", () => {
    const o = new Outbox("p");
    o.add("a", "1");
    o.add("b", "2");
    o.add("a", "3");
    assert.deepEqual(o.take("a").map((e) => e.text), ["1", "3"]);
    assert.deepEqual(o.take("a"), [], "already sent on this connection");
    o.disconnected();
    assert.deepEqual(o.take("a").map((e) => e.id), ["p-1", "p-3"], "sent again on the next one, same ids");
  });

  test("an entry leaves on its copy or ack (its room only), or when dropped", () => {
    const rows = [
      // [what, action, result is an entry, pending ids after]
      ["copy", (o) => o.confirm("a", "p-1"), true, ["p-2", "p-3"]],
      ["ack of another room's id", (o) => o.confirm("b", "p-1"), false, ["p-1", "p-2", "p-3"]],
      ["unknown id", (o) => o.confirm("a", "p-9"), false, ["p-1", "p-2", "p-3"]],
      ["drop", (o) => o.drop("a", "p-3"), true, ["p-1", "p-2"]],
      ["drop the room", (o) => o.dropRoom("a").length === 2, true, ["p-2"]],
    ];
    for (const [what, action, found, after] of rows) {
      const o = new Outbox("p");
      o.add("a", "1");
      o.add("b", "2");
      o.add("a", "3");
      assert.equal(!!action(o), found, what);
      assert.deepEqual(o.pending().map((e) => e.id), after, what);
    }
  });

  test("unavailable: the entry waits with a growing backoff; take sends it again", () => {
    const o = new Outbox("p");
    o.add("a", "1");
    o.take("a");
    const half = () => 0.5;
    assert.equal(o.unavailable("p-1", undefined, half).delayMs, 250);
    assert.equal(o.isWaiting("p-1"), true);
    assert.deepEqual(o.take("a").map((e) => e.id), ["p-1"]);
    assert.equal(o.isWaiting("p-1"), false);
    assert.equal(o.unavailable("p-1", undefined, half).delayMs, 500);
    assert.equal(o.unavailable("p-9"), null);
  });
});

/** A core after a hello with rooms a and b joined fresh at seq 0 (epoch e1). */
function joinedCore(rooms = ["a", "b"], options = {}) {
  const core = new RoomsCore({ idPrefix: "t", random: () => 0.5, ...options });
  for (const room of rooms) core.join(room, { last: 0 });
  const fx = core.connected();
  for (const f of fx.send) core.frame({ type: "joined", room: f.room, epoch: "e1", seq: 0, ref: f.ref });
  return core;
}

const msg = (room, seq, extra = {}) => ({ type: "message", room, from: "bob", text: `${room}${seq}`, seq, ts: 1000 + seq, ...extra });
const emitted = (fx, type) => fx.emit.filter(([t]) => t === type).map(([, d]) => d);

describe("RoomsCore", () => {
  test("rooms given before the hello are joined on it, each with a ref; `last` only on a first join", () => {
    const core = new RoomsCore({ idPrefix: "t" });
    assert.equal(core.join("a", { last: 50 }).ok, true);
    assert.equal(core.join("b").ok, true);
    assert.deepEqual(core.join("a").send, [], "nothing to send before the hello");
    assert.equal(core.join("a").ok, false, "already the client's");
    assert.equal(core.join("bad room").ok, false);
    const fx = core.connected();
    assert.deepEqual(fx.send, [
      { type: "join", room: "a", last: 50, ref: "j1" },
      { type: "join", room: "b", ref: "j2" },
    ]);
    assert.deepEqual(core.rooms(), ["a", "b"]);
  });

  test("per room: each seq once and in order, whatever the other room does", () => {
    const core = joinedCore();
    const frames = [msg("a", 1), msg("b", 1), msg("a", 2), msg("a", 1), msg("b", 3), msg("b", 2), msg("a", 2), msg("a", 3), msg("b", 4)];
    const got = frames.flatMap((f) => emitted(core.frame(f), "message").map((m) => `${m.room}${m.seq}`));
    assert.deepEqual(got, ["a1", "b1", "a2", "b3", "a3", "b4"]);
  });

  test("property: any interleaving of two rooms with duplicates and local swaps gives each room increasing, unique seqs", () => {
    const random = seeded(99);
    for (let round = 0; round < 200; round++) {
      const core = joinedCore();
      const frames = [];
      for (const room of ["a", "b"]) {
        for (let seq = 1; seq <= 20; seq++) {
          frames.push(msg(room, seq));
          if (random() < 0.3) frames.push(msg(room, seq));
        }
      }
      for (let i = frames.length - 1; i > 0; i--) {
        if (random() < 0.5) {
          const j = Math.floor(random() * (i + 1));
          if (frames[i].room !== frames[j].room) [frames[i], frames[j]] = [frames[j], frames[i]];
        }
      }
      const seen = { a: [], b: [] };
      for (const f of frames) for (const m of emitted(core.frame(f), "message")) seen[m.room].push(m.seq);
      for (const room of ["a", "b"]) {
        const s = seen[room];
        for (let i = 1; i < s.length; i++) assert.ok(s[i] > s[i - 1], `${room}: ${s}`);
        assert.equal(s.at(-1), 20, `${room}: the newest seq is delivered`);
      }
    }
  });

  test("frames of a room not joined, or being left, are not the app's", () => {
    const core = joinedCore(["a"]);
    assert.deepEqual(core.frame(msg("zzz", 1)).emit, []);
    core.leave("a");
    assert.deepEqual(core.frame(msg("a", 1)).emit, []);
    assert.deepEqual(core.frame({ type: "signal", room: "a", from: "bob", text: "x" }).emit, []);
  });

  test("after a reconnect each room is joined with its own since/epoch; replies: resumed in one, gap in the other", () => {
    const core = joinedCore();
    core.frame(msg("a", 1));
    core.frame(msg("a", 2));
    core.frame(msg("b", 1));
    core.frame({ type: "epoch", room: "b", epoch: "e9", seq: 0 });
    core.frame(msg("b", 1));
    core.disconnected();
    assert.deepEqual(core.roomState("a").status, "queued");
    const fx = core.connected();
    assert.deepEqual(fx.send.map(({ room, since, epoch, last }) => ({ room, since, epoch, last })), [
      { room: "a", since: 2, epoch: "e1", last: undefined },
      { room: "b", since: 1, epoch: "e9", last: undefined },
    ]);
    const [ja, jb] = fx.send;
    const a = core.frame({ type: "joined", room: "a", epoch: "e1", seq: 4, resumed: true, missed: 2, ref: ja.ref });
    assert.deepEqual(emitted(a, "resumed"), [{ room: "a", missed: 2 }]);
    const b = core.frame({ type: "joined", room: "b", epoch: "e10", seq: 7, resumed: false, ref: jb.ref });
    assert.deepEqual(emitted(b, "gap"), [{ room: "b", previousEpoch: "e9", previousSeq: 1, epoch: "e10", seq: 7 }]);
    assert.deepEqual(emitted(b, "joined"), [{ room: "b", epoch: "e10", seq: 7, resumed: false }]);
  });

  test("publish: an id, sent now when joined, kept until its copy; resent with the same id after a reconnect", () => {
    const core = joinedCore(["a"]);
    const p = core.publish("a", "hello");
    assert.equal(p.id, "t-1");
    assert.deepEqual(p.send, [{ type: "publish", room: "a", text: "hello", id: "t-1" }]);
    core.disconnected();
    const q = core.publish("a", "while away");
    assert.equal(q.id, "t-2");
    assert.deepEqual(q.send, [], "queued while disconnected");
    const fx = core.connected();
    assert.deepEqual(fx.send.map((f) => f.type), ["join"], "publishes wait for the joined");
    const joined = core.frame({ type: "joined", room: "a", epoch: "e1", seq: 0, resumed: true, missed: 0, ref: fx.send[0].ref });
    assert.deepEqual(joined.send, [
      { type: "publish", room: "a", text: "hello", id: "t-1" },
      { type: "publish", room: "a", text: "while away", id: "t-2" },
    ]);
    const copy = core.frame(msg("a", 1, { from: "me", text: "hello", id: "t-1" }));
    assert.deepEqual(emitted(copy, "delivered"), [{ room: "a", id: "t-1", seq: 1 }]);
    assert.deepEqual(emitted(copy, "message")[0].id, "t-1");
    const ack = core.frame({ type: "ack", room: "a", id: "t-2", seq: 7 });
    assert.deepEqual(emitted(ack, "delivered"), [{ room: "a", id: "t-2", seq: 7, duplicate: true }]);
    assert.deepEqual(core.pending(), []);
    assert.deepEqual(core.frame({ type: "ack", room: "a", id: "t-2", seq: 7 }).emit, [], "a second ack: nothing");
  });

  test("after a resume, publishes wait for the replay: a copy in it confirms them without a resend", () => {
    const core = joinedCore(["a"]);
    core.publish("a", "x"); // t-1, sent
    core.disconnected();
    const fx = core.connected();
    const joined = core.frame({ type: "joined", room: "a", epoch: "e1", seq: 2, resumed: true, missed: 2, ref: fx.send[0].ref });
    assert.deepEqual(joined.send, [], "not before the replay");
    const r1 = core.frame(msg("a", 1, { from: "me", text: "x", id: "t-1" }));
    assert.deepEqual(emitted(r1, "delivered"), [{ room: "a", id: "t-1", seq: 1 }]);
    const r2 = core.frame(msg("a", 2));
    assert.deepEqual(r2.send, [], "confirmed by the replay: nothing to resend");
    assert.deepEqual(core.pending(), []);
  });

  test("a replay that does not carry the copy: the publish goes out after its last message", () => {
    const core = joinedCore(["a"]);
    core.publish("a", "x");
    core.disconnected();
    const fx = core.connected();
    core.frame({ type: "joined", room: "a", epoch: "e1", seq: 2, resumed: true, missed: 2, ref: fx.send[0].ref });
    assert.deepEqual(core.frame(msg("a", 1)).send, []);
    assert.deepEqual(core.frame(msg("a", 2)).send, [{ type: "publish", room: "a", text: "x", id: "t-1" }]);
  });

  test("unavailable for a publish: kept, retried with the same id after the delay, the app told", () => {
    const core = joinedCore(["a"]);
    core.publish("a", "x");
    const err = core.frame({ type: "error", code: "unavailable", room: "a", id: "t-1", text: "broker down" });
    assert.deepEqual(emitted(err, "error"), [
      { code: "unavailable", text: "broker down", room: "a", id: "t-1", request: "publish", retryInMs: 250 },
    ]);
    assert.deepEqual(err.timers, [{ kind: "publish", id: "t-1", delayMs: 250 }]);
    assert.deepEqual(core.pending(), [{ room: "a", id: "t-1", text: "x" }]);
    assert.deepEqual(core.retryPublish("t-1").send, [{ type: "publish", room: "a", text: "x", id: "t-1" }]);
    assert.deepEqual(core.retryPublish("t-1").send, [], "once");
    const again = core.frame({ type: "error", code: "unavailable", room: "a", id: "t-1" });
    assert.equal(again.timers[0].delayMs, 500, "the delay grows");
  });

  test("a publish refused for another reason is dropped", () => {
    for (const code of ["bad_request", "not_joined", "forbidden"]) {
      const core = joinedCore(["a"]);
      core.publish("a", "x");
      const fx = core.frame({ type: "error", code, room: "a", id: "t-1" });
      assert.equal(emitted(fx, "error")[0].dropped, true, code);
      assert.deepEqual(core.pending(), [], code);
    }
  });

  test("join and leave while connected; frames of a left room stop; publish to it is refused", () => {
    const core = joinedCore(["a"]);
    const j = core.join("c", { last: 20 });
    assert.deepEqual(j.send, [{ type: "join", room: "c", last: 20, ref: j.send[0].ref }]);
    assert.equal(core.roomState("c").status, "joining");
    const joined = core.frame({ type: "joined", room: "c", epoch: "ec", seq: 5, ref: j.send[0].ref });
    assert.deepEqual(emitted(joined, "joined"), [{ room: "c", epoch: "ec", seq: 5, last: 20 }]);
    assert.deepEqual(emitted(core.frame(msg("c", 4)), "message").map((m) => m.seq), [4], "a recent message");
    core.publish("c", "unsent?");
    core.frame({ type: "presence", room: "c", members: [] }); // unrelated
    const l = core.leave("c");
    assert.deepEqual(l.send, [{ type: "leave", room: "c", ref: l.send[0].ref }]);
    assert.deepEqual(core.rooms(), ["a"]);
    assert.equal(core.publish("c", "x").id, null);
    const left = core.frame({ type: "left", room: "c", ref: l.send[0].ref });
    assert.deepEqual(emitted(left, "left"), [{ room: "c", unsent: [{ id: "t-1", text: "unsent?" }] }]);
    assert.equal(core.roomState("c"), null);
    assert.equal(core.leave("c").ok, false);
  });

  test("leave while disconnected is at once; a room being left is not joined again on reconnect", () => {
    const core = joinedCore(["a", "b"]);
    core.disconnected();
    const l = core.leave("a");
    assert.deepEqual(l.send, []);
    assert.deepEqual(emitted(l, "left"), [{ room: "a", unsent: [] }]);
    const m = core.leave("b");
    assert.deepEqual(emitted(m, "left").length, 1);
    assert.deepEqual(core.connected().send, []);
  });

  test("leave, then join again before `left`: the new join goes out after `left`, fresh", () => {
    const core = joinedCore(["a"]);
    core.frame(msg("a", 1));
    const l = core.leave("a");
    assert.equal(core.join("a", { last: 5 }).send.length, 0, "waits for left");
    const left = core.frame({ type: "left", room: "a", ref: l.send[0].ref });
    assert.equal(emitted(left, "left").length, 1);
    assert.deepEqual(left.send.map(({ type, room, last, since }) => ({ type, room, last, since })), [
      { type: "join", room: "a", last: 5, since: undefined },
    ]);
  });

  test("join refusals (table): unavailable retries; forbidden and the like give the room up", () => {
    const rows = [
      // [code, still the client's room, a retry timer]
      ["unavailable", true, true],
      ["forbidden", false, false],
      ["bad_room", false, false],
      ["too_many_rooms", false, false],
      ["bad_request", false, false],
    ];
    for (const [code, kept, retry] of rows) {
      const core = joinedCore(["a"]);
      const j = core.join("c");
      const ref = j.send[0].ref;
      const fx = core.frame({ type: "error", code, room: "c", ref, text: "no" });
      const [err] = emitted(fx, "error");
      assert.equal(err.code, code);
      assert.equal(err.request, "join", code);
      assert.equal(core.rooms().includes("c"), kept, code);
      assert.equal(fx.timers.length > 0, retry, code);
      if (retry) {
        assert.equal(core.roomState("c").status, "waiting");
        const again = core.retryJoin("c");
        assert.equal(again.send[0].type, "join", code);
        assert.equal(core.roomState("c").status, "joining");
      }
    }
  });

  test("not_joined for a leave counts as left; other errors are reported with their fields", () => {
    const core = joinedCore(["a"]);
    const l = core.leave("a");
    const fx = core.frame({ type: "error", code: "not_joined", room: "a", ref: l.send[0].ref });
    assert.deepEqual(emitted(fx, "left"), [{ room: "a", unsent: [] }]);
    assert.deepEqual(emitted(fx, "error"), []);
    const other = core.frame({ type: "error", code: "bad_request", text: "no type" });
    assert.deepEqual(emitted(other, "error"), [{ code: "bad_request", text: "no type" }]);
  });

  test("signal, presence and presence events per room", () => {
    const core = joinedCore(["a"]);
    assert.deepEqual(core.signal("a", '{"typing":true}').send, [{ type: "signal", room: "a", text: '{"typing":true}' }]);
    assert.equal(core.signal("b", "x").ok, false);
    const p = core.presence("a");
    assert.deepEqual(p.send, [{ type: "presence", room: "a", ref: p.ref }]);
    const members = [{ name: "ann", connections: 2 }];
    assert.deepEqual(emitted(core.frame({ type: "presence", room: "a", members, ref: p.ref }), "presence"), [{ room: "a", members }]);
    assert.deepEqual(emitted(core.frame({ type: "presence_join", room: "a", name: "bob" }), "presence_join"), [{ room: "a", name: "bob" }]);
    assert.deepEqual(emitted(core.frame({ type: "presence_leave", room: "a", name: "bob" }), "presence_leave"), [{ room: "a", name: "bob" }]);
    assert.deepEqual(emitted(core.frame({ type: "signal", room: "a", from: "bob", text: "t" }), "signal"), [{ room: "a", from: "bob", text: "t" }]);
    core.disconnected();
    assert.equal(core.signal("a", "x").ok, false, "never queued");
    assert.equal(core.presence("a").ref, null);
  });
});
