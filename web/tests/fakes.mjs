// Test doubles for web/wsgrace.js: a fake WebSocket class the tests drive by hand, a fake
// clock (setTimeout/clearTimeout over virtual time), and an event recorder. Not a test file
// itself (the runner only picks up *.test.mjs).

/** A WebSocket class whose instances are listed in `sockets`, in creation order. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols === undefined ? [] : [].concat(protocols);
      this.protocol = "";
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(text);
    }
    close(code, reason) {
      this.closeCalls.push({ code, reason });
      if (this.readyState < 2) this.readyState = 2;
    }
    // --- driven by the test ---
    /** The upgrade succeeded; the server agrees to the first subprotocol offered, or to
     *  `protocol` when given ("" for none). */
    open(protocol = this.protocols[0] || "") {
      this.protocol = protocol;
      this.readyState = 1;
      this.onopen?.({ type: "open" });
    }
    /** A text frame from the server: an object is sent as JSON, a string as is. */
    receive(frame) {
      const data = typeof frame === "string" ? frame : JSON.stringify(frame);
      this.onmessage?.({ type: "message", data });
    }
    /** The socket's close event. */
    closed(code, reason = "", wasClean = code !== 1006) {
      this.readyState = 3;
      this.onerror?.({ type: "error" });
      this.onclose?.({ type: "close", code, reason, wasClean });
    }
    /** The JSON frames sent, parsed (v2). */
    get frames() {
      return this.sent.map((text) => JSON.parse(text));
    }
    /** The URL's query as a plain object. */
    get query() {
      return Object.fromEntries(new URL(this.url).searchParams);
    }
  }
  return { FakeWebSocket, sockets };
}

/**
 * A fetch for the refusal probe that the test answers by hand: `calls` lists each request
 * as {url, init, answer(status, body), fail()}; nothing settles until the test says so.
 */
export function fakeFetch() {
  const calls = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      calls.push({
        url: String(url),
        init,
        answer: (status, body = "") => resolve({ status, text: async () => body }),
        fail: () => reject(new TypeError("Failed to fetch")),
      });
    });
  return { fetch, calls };
}

/** Virtual time: timers run only when the test calls `advance`. */
export class FakeClock {
  now = 0;
  #timers = [];
  #nextId = 1;
  setTimeout = (fn, ms = 0) => {
    const id = this.#nextId++;
    this.#timers.push({ id, at: this.now + Math.max(0, ms), fn });
    return id;
  };
  clearTimeout = (id) => {
    this.#timers = this.#timers.filter((t) => t.id !== id);
  };
  /** Delays (from now) of the timers still pending. */
  pending() {
    return this.#timers.map((t) => t.at - this.now);
  }
  /** Moves time forward by `ms`, running every timer that falls due, in order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const due = this.#timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id);
      if (due.length === 0) break;
      const t = due[0];
      this.#timers = this.#timers.filter((x) => x !== t);
      this.now = t.at;
      t.fn();
    }
    this.now = end;
  }
}

/** Lets pending promise callbacks (an async getToken) run. No wall-clock wait. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** Records every event of `client` as [type, detail]; `of(type)` lists one type's details. */
export function record(client) {
  const types = [
    "state", "welcome", "message", "resumed", "gap", "epoch", "going_away", "error", "close", "refused",
    // v2
    "hello", "joined", "left", "delivered", "signal", "presence", "presence_join", "presence_leave",
  ];
  const events = [];
  for (const type of types) client.addEventListener(type, (e) => events.push([type, e.detail]));
  return {
    events,
    of: (type) => events.filter(([t]) => t === type).map(([, d]) => d),
    seqs: () => events.filter(([t]) => t === "message").map(([, d]) => d.seq),
    states: () => events.filter(([t]) => t === "state").map(([, d]) => d.state),
  };
}

/** A random in [0, 1) that returns the given values in turn (then the last one forever). */
export function randoms(...values) {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)];
}

/** A small seeded PRNG (mulberry32) for property tests that must be reproducible. */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
