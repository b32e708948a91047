// The pure core of web/wsgrace.js: backoff, the sequence tracker, the reconnect decision
// table and the URL builder. No socket, no timer.

import { test, describe } from "node:test";
import assert from "node:assert/strict";

import {
  backoffDelay,
  buildUrl,
  DEFAULT_BACKOFF,
  nextStep,
  SeqTracker,
} from "../wsgrace.js";
import { seeded } from "./fakes.mjs";

const JUST_BELOW_ONE = 1 - Number.EPSILON;

describe("backoffDelay", () => {
  test("defaults are base 500 ms, cap 10 000 ms", () => {
    assert.deepEqual({ ...DEFAULT_BACKOFF }, { baseMs: 500, capMs: 10000 });
  });

  test("the ceiling doubles per attempt from the base and stops at the cap", () => {
    const ceilings = [];
    for (let attempt = 0; attempt <= 8; attempt++) {
      ceilings.push(backoffDelay(attempt, DEFAULT_BACKOFF, () => JUST_BELOW_ONE) + 1);
    }
    assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]);
  });

  test("full jitter: the delay is random × ceiling, from 0 up to (not including) it", () => {
    const rows = [
      // attempt, random, delay
      [0, 0, 0],
      [0, 0.5, 250],
      [0, 0.999, 499],
      [1, 0.25, 250],
      [3, 0.5, 2000],
      [4, 0.75, 6000],
      [5, 0.5, 5000], // 500·32 = 16 000 capped to 10 000
      [30, 0.1, 1000],
    ];
    for (const [attempt, r, delay] of rows) {
      assert.equal(backoffDelay(attempt, DEFAULT_BACKOFF, () => r), delay, `attempt ${attempt}, random ${r}`);
    }
  });

  test("bounds hold for every attempt and random value, including absurd attempts", () => {
    const random = seeded(7);
    for (let attempt = 0; attempt < 2000; attempt += 7) {
      const d = backoffDelay(attempt, DEFAULT_BACKOFF, random);
      const ceiling = Math.min(10000, 500 * 2 ** attempt);
      assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${attempt}: ${d}`);
    }
    // A broken random source (1, NaN, negative) still gives a delay inside the bounds.
    assert.equal(backoffDelay(0, DEFAULT_BACKOFF, () => 1), 499);
    assert.equal(backoffDelay(0, DEFAULT_BACKOFF, () => NaN), 0);
    assert.equal(backoffDelay(0, DEFAULT_BACKOFF, () => -3), 0);
    assert.equal(backoffDelay(-4, DEFAULT_BACKOFF, () => 0.5), 250);
  });

  test("custom base and cap", () => {
    const b = { baseMs: 100, capMs: 350 };
    assert.equal(backoffDelay(0, b, () => 0.5), 50);
    assert.equal(backoffDelay(1, b, () => 0.5), 100);
    assert.equal(backoffDelay(2, b, () => 0.5), 175); // 400 capped to 350
    assert.equal(backoffDelay(1, { baseMs: 1000 }, () => 0.5), 1000); // cap stays 10 000
  });

  test("spread: over many draws the delays cover the whole interval", () => {
    const random = seeded(42);
    const draws = Array.from({ length: 2000 }, () => backoffDelay(2, DEFAULT_BACKOFF, random));
    assert.ok(Math.min(...draws) < 100, "some delays near 0");
    assert.ok(Math.max(...draws) > 1900, "some delays near the ceiling of 2000");
  });
});

describe("SeqTracker", () => {
  test("nothing to resume before the first welcome", () => {
    assert.equal(new SeqTracker().resumeParams(), null);
  });

  test("a first welcome sets the baseline: since = its seq, epoch = its epoch", () => {
    const t = new SeqTracker();
    assert.deepEqual(t.onWelcome({ type: "welcome", epoch: "e1", seq: 7 }, false), { kind: "fresh" });
    assert.deepEqual(t.resumeParams(), { since: 7, epoch: "e1" });
    assert.equal(t.onMessage({ seq: 7 }), false, "seq of the welcome is already past");
    assert.equal(t.onMessage({ seq: 8 }), true);
    assert.deepEqual(t.resumeParams(), { since: 8, epoch: "e1" });
  });

  test("duplicates and reordering never reach the app (table)", () => {
    const rows = [
      // incoming seqs after a welcome at seq 0 → the ones the app gets
      [[1, 2, 3], [1, 2, 3]],
      [[1, 1, 2, 2, 3, 3], [1, 2, 3]],
      [[1, 3, 2, 4], [1, 3, 4]],
      [[2, 1, 3], [2, 3]],
      [[5, 4, 3, 6], [5, 6]],
      [[1, 2, 1, 2, 3, 1], [1, 2, 3]],
      [[0, 1], [1]],
    ];
    for (const [incoming, delivered] of rows) {
      const t = new SeqTracker();
      t.onWelcome({ epoch: 1, seq: 0 }, false);
      assert.deepEqual(incoming.filter((seq) => t.onMessage({ seq })), delivered, `${incoming}`);
    }
  });

  test("frames without a usable seq are dropped", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: 1, seq: 0 }, false);
    for (const seq of [undefined, null, "3", -1, 1.5, NaN, 2 ** 64]) {
      assert.equal(t.onMessage({ seq }), false, String(seq));
    }
    assert.equal(t.seq, 0);
  });

  test("property: any shuffle with duplicates gives a strictly increasing, unique sequence", () => {
    const random = seeded(1234);
    for (let round = 0; round < 300; round++) {
      const n = 1 + Math.floor(random() * 30);
      const frames = [];
      for (let seq = 1; seq <= n; seq++) {
        frames.push(seq);
        if (random() < 0.3) frames.push(seq); // a duplicate
      }
      // local swaps: reorder without losing the overall order completely
      for (let i = 0; i + 1 < frames.length; i++) {
        if (random() < 0.2) [frames[i], frames[i + 1]] = [frames[i + 1], frames[i]];
      }
      const t = new SeqTracker();
      t.onWelcome({ epoch: "e", seq: 0 }, false);
      const got = frames.filter((seq) => t.onMessage({ seq }));
      for (let i = 1; i < got.length; i++) assert.ok(got[i] > got[i - 1], `${frames} → ${got}`);
      assert.equal(got.at(-1), n, "the newest seq is always delivered");
    }
  });

  test("a resumed welcome keeps the old position so the replay is delivered", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: "e1", seq: 3 }, false);
    t.onMessage({ seq: 4 });
    assert.deepEqual(t.onWelcome({ epoch: "e1", seq: 7, resumed: true, missed: 3 }, true), {
      kind: "resumed",
      missed: 3,
    });
    assert.deepEqual([4, 5, 6, 6, 7, 8].filter((seq) => t.onMessage({ seq })), [5, 6, 7, 8]);
  });

  test("resumed:false after a baseline is a gap; delivery continues after the welcome's seq", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: "e1", seq: 3 }, false);
    t.onMessage({ seq: 4 });
    assert.deepEqual(t.onWelcome({ epoch: "e1", seq: 50, resumed: false }, true), {
      kind: "gap",
      previousEpoch: "e1",
      previousSeq: 4,
      epoch: "e1",
      seq: 50,
    });
    assert.deepEqual([49, 50, 51].filter((seq) => t.onMessage({ seq })), [51]);
    assert.deepEqual(t.resumeParams(), { since: 51, epoch: "e1" });
  });

  test("resumed:false into another epoch is a gap, and seqs may restart", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: "e1", seq: 40 }, false);
    const out = t.onWelcome({ epoch: "e2", seq: 2, resumed: false }, true);
    assert.equal(out.kind, "gap");
    assert.deepEqual([2, 3].filter((seq) => t.onMessage({ seq })), [3]);
    assert.deepEqual(t.resumeParams(), { since: 3, epoch: "e2" });
  });

  test("resumed:false that provably missed nothing (same epoch, same seq) is no gap", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: "e1", seq: 9 }, false);
    assert.deepEqual(t.onWelcome({ epoch: "e1", seq: 9, resumed: false }, true), { kind: "not_resumed" });
  });

  test("a welcome without `resumed` after a resume was asked counts as not resumed", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: "e1", seq: 1 }, false);
    assert.equal(t.onWelcome({ epoch: "e1", seq: 5 }, true).kind, "gap");
  });

  test("an epoch frame resets epoch and seq; seqs from 1 are delivered again", () => {
    const t = new SeqTracker();
    t.onWelcome({ epoch: "e1", seq: 0 }, false);
    [1, 2, 3].forEach((seq) => t.onMessage({ seq }));
    t.onEpoch({ type: "epoch", room: "r", epoch: "e2", seq: 0 });
    assert.deepEqual(t.resumeParams(), { since: 0, epoch: "e2" });
    assert.deepEqual([1, 1, 2].filter((seq) => t.onMessage({ seq })), [1, 2]);
  });
});

describe("nextStep: the reconnect decision table", () => {
  const base = { appClosed: false, goingAwayMs: null, welcomed: true, attempt: 0, canRefreshToken: true };
  const half = () => 0.5;
  const rows = [
    // [what, close code, ctx overrides, expected]
    ["app close", 1000, { appClosed: true }, { action: "stop" }],
    ["app close wins over going_away", 1001, { appClosed: true, goingAwayMs: 100 }, { action: "stop" }],
    ["app close while a 1006 happens", 1006, { appClosed: true }, { action: "stop" }],
    ["going_away then 1001", 1001, { goingAwayMs: 1234 }, { action: "reconnect", delayMs: 1234, freshToken: false }],
    ["going_away then 1000", 1000, { goingAwayMs: 0 }, { action: "reconnect", delayMs: 0, freshToken: false }],
    ["going_away then 1012", 1012, { goingAwayMs: 40 }, { action: "reconnect", delayMs: 40, freshToken: false }],
    ["going_away then 4000", 4000, { goingAwayMs: 40 }, { action: "reconnect", delayMs: 40, freshToken: false }],
    ["going_away then 3000", 3000, { goingAwayMs: 40 }, { action: "reconnect", delayMs: 40, freshToken: true }],
    ["going_away then 3000 without getToken", 3000, { goingAwayMs: 40, canRefreshToken: false }, { action: "stop" }],
    ["going_away with a bad delay", 1001, { goingAwayMs: -5 }, { action: "reconnect", delayMs: 250, freshToken: false }],
    ["1006 after a welcome", 1006, {}, { action: "reconnect", delayMs: 250, freshToken: false, attempt: 1 }],
    ["1006 upgrade refused, 3rd try", 1006, { welcomed: false, attempt: 2 }, { action: "reconnect", delayMs: 1000, attempt: 3 }],
    ["1006 many failures: capped", 1006, { welcomed: false, attempt: 12 }, { action: "reconnect", delayMs: 5000, attempt: 13 }],
    ["1001 without going_away", 1001, {}, { action: "reconnect", delayMs: 250, freshToken: false }],
    ["1005 no status", 1005, {}, { action: "reconnect", delayMs: 250 }],
    ["1011 internal error", 1011, {}, { action: "reconnect", delayMs: 250 }],
    ["1012 service restart", 1012, { welcomed: false, attempt: 1 }, { action: "reconnect", delayMs: 500 }],
    ["1013 try again later", 1013, {}, { action: "reconnect", delayMs: 250 }],
    ["1014 bad gateway", 1014, {}, { action: "reconnect", delayMs: 250 }],
    ["3000 token expired", 3000, {}, { action: "reconnect", delayMs: 250, freshToken: true, attempt: 1 }],
    ["3000 jitter stays ≤ base even after failures", 3000, { welcomed: false, attempt: 6 }, { action: "reconnect", delayMs: 250, freshToken: true }],
    ["3000 without getToken", 3000, { canRefreshToken: false }, { action: "stop" }],
    ["1000 normal", 1000, {}, { action: "stop" }],
    ["1002 protocol error", 1002, {}, { action: "stop" }],
    ["1003 unsupported data", 1003, {}, { action: "stop" }],
    ["1007 invalid payload", 1007, {}, { action: "stop" }],
    ["1008 policy (rate limit)", 1008, {}, { action: "stop" }],
    ["1009 too big", 1009, {}, { action: "stop" }],
    ["1010 extension", 1010, {}, { action: "stop" }],
    ["1015 TLS", 1015, {}, { action: "stop" }],
    ["3001 library code", 3001, {}, { action: "stop" }],
    ["4000 app code", 4000, {}, { action: "stop" }],
    ["4999 app code", 4999, {}, { action: "stop" }],
  ];
  for (const [what, code, overrides, expected] of rows) {
    test(`${what} (${code}) → ${expected.action}`, () => {
      const step = nextStep({ code, reason: "", wasClean: true }, { ...base, ...overrides, random: half });
      for (const [key, value] of Object.entries(expected)) {
        assert.equal(step[key], value, `${key} of ${JSON.stringify(step)}`);
      }
      assert.equal(typeof step.why, "string");
      if (step.action === "stop") assert.equal(step.delayMs, undefined);
    });
  }

  test("a welcome resets the attempt counter; failures without one grow it", () => {
    const ctx = { ...base, random: () => JUST_BELOW_ONE };
    let attempt = 0;
    const delays = [];
    for (let i = 0; i < 7; i++) {
      const step = nextStep({ code: 1006 }, { ...ctx, welcomed: false, attempt });
      delays.push(step.delayMs);
      attempt = step.attempt;
    }
    assert.deepEqual(delays, [499, 999, 1999, 3999, 7999, 9999, 9999]);
    assert.equal(nextStep({ code: 1006 }, { ...ctx, welcomed: true, attempt }).delayMs, 499);
  });

  test("a missing close event or code is treated as 1005 (reconnect)", () => {
    assert.equal(nextStep(undefined, base).action, "reconnect");
    assert.equal(nextStep({}, base).action, "reconnect");
  });
});

describe("buildUrl", () => {
  test("room, name, token, and since/epoch when resuming", () => {
    const url = buildUrl("ws://h:8080/ws", {
      room: "r1",
      name: "ann",
      token: "a.b.c",
      resume: { since: 12, epoch: "e-9" },
    });
    assert.equal(url, "ws://h:8080/ws?room=r1&name=ann&token=a.b.c&since=12&epoch=e-9");
  });

  test("omits what is not given; keeps the base's own query; http(s) → ws(s)", () => {
    assert.equal(buildUrl("http://h/ws", { room: "r" }), "ws://h/ws?room=r");
    assert.equal(buildUrl("https://h/ws?x=1", {}), "wss://h/ws?x=1");
    assert.equal(buildUrl(new URL("ws://h/ws"), { resume: { since: 0, epoch: 0 } }), "ws://h/ws?since=0&epoch=0");
  });

  test("escapes values", () => {
    const url = new URL(buildUrl("ws://h/ws", { token: "a+b/c=&d" }));
    assert.equal(url.searchParams.get("token"), "a+b/c=&d");
  });
});
