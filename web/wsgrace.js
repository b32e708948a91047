// wsgrace.js — the browser client for a wsgrace chat server, as one plain ES module (no
// build step, no dependency). Served at `GET /wsgrace.js`.
//
// What it owns: one logical connection to one room that survives the server going away —
// it reconnects with jittered backoff, honours `going_away`, resumes with `since`/`epoch`,
// and hands the app each chat message once and in seq order. What it must not do: touch the
// DOM, queue the app's messages while disconnected, or guess past what the server said.
//
// Shape: a pure core (`backoffDelay`, `SeqTracker`, `nextStep`, `buildUrl`, exported and
// unit-tested without a socket) and a thin shell (`connect` / `WsgraceClient`) that owns the
// WebSocket and the timers and only carries out what the core decides.
//
// ## API
//
//   import { connect } from "/wsgrace.js";
//   const client = connect({
//     url,        // WebSocket endpoint, e.g. "wss://chat.example/ws" (string or URL; an
//                 // http(s) URL is turned into ws(s)); default: `/ws` on the page's origin
//     room,       // room name (omitted: the server's default, "lobby")
//     name,       // nickname (omitted: the server picks one; reconnects keep that one)
//     token,      // JWT for `?token=` (optional)
//     getToken,   // optional `async () => token`, called before every reconnect (and
//                 // before the first connect when `token` is not given); its token replaces
//                 // the old one. Required to survive close 3000 ("token expired").
//     backoff,    // { baseMs: 500, capMs: 10000 }
//     WebSocketImpl,          // default globalThis.WebSocket; injectable for tests
//     setTimeout, clearTimeout, // default the global ones; injectable for tests
//     random,     // default Math.random; injectable for tests
//   });
//
//   client.send(text)   → true if handed to an open connection, false otherwise (nothing is
//                         queued while disconnected: the app decides what to do)
//   client.close(code = 1000, reason = "")  → stop for good: state `closed` at once, no
//                         reconnect; the socket's own close is still reported as `close`
//   client.reconnect()  → from state `closed`: connect again, resuming where it stopped
//   client.state        → "connecting" | "open" | "reconnecting" | "closed"
//   client.room, client.name (the name of the last welcome), client.epoch, client.lastSeq
//
//   The client is an EventTarget; every event is a CustomEvent whose `detail` is:
//     state     { state, previous }   connecting (the first attempt) → open (welcome received)
//                                     → reconnecting (dropped; until the next welcome)
//                                     → closed (no more reconnects)
//     welcome   the welcome object    {room, name, epoch, seq, resumed?, missed?}
//     message   {room, from, text, seq}  each seq once, in increasing order (per epoch)
//     resumed   { missed }            a resume succeeded; `missed` messages are replayed next
//     gap       { previousEpoch, previousSeq, epoch, seq }   a resume was refused
//                                     (`resumed: false`): messages after previousSeq may be
//                                     lost; delivery continues after `seq` (reload if needed)
//     epoch     {room, epoch, seq}    the room's history was reset; seqs continue from seq+1
//     going_away { reconnectAfterMs } the server is about to close this connection
//     error     {code, text}          the server refused a message of ours (e.g. code
//                                     "unavailable"); or, from the client itself, code
//                                     "token" (getToken threw: retried after backoff) or
//                                     "connect" (the WebSocket constructor threw, e.g. a bad
//                                     url: state closed)
//     close     {code, reason, wasClean, opened, welcomed, next}  every underlying socket's
//                                     close; `opened`: the upgrade had succeeded (false: the
//                                     attempt failed, e.g. HTTP 401/503 — browsers show only
//                                     1006); `next`: the decision below ({action, delayMs, ...})
//
// ## Reconnect policy (decided by `nextStep`, for the close of each underlying socket)
//
//   | how the connection ended                     | what the client does                  |
//   |----------------------------------------------|---------------------------------------|
//   | the app called close()                       | stop (state closed)                   |
//   | a going_away came before the close, any code | reconnect after its reconnect_after_ms|
//   |                                              | (with 3000 and no getToken: stop)     |
//   | 1006 abnormal (network drop, server gone, or | reconnect after backoff               |
//   |   the upgrade refused: HTTP 401/403/429/503; |                                       |
//   |   a browser cannot tell these apart)         |                                       |
//   | 1001 going away, 1005 no status, 1011        | reconnect after backoff               |
//   |   internal error, 1012 service restart, 1013 |                                       |
//   |   try again later, 1014 bad gateway          |                                       |
//   | 3000 token expired                           | getToken(), reconnect after           |
//   |                                              | random(0, baseMs); stop if no getToken|
//   | getToken() throws (no socket was opened)     | `error` {code:"token"}, retry after   |
//   |                                              | backoff                               |
//   | 1000 normal closure                          | stop (normal end)                     |
//   | 1002 protocol error, 1003 unsupported data,  | stop: the server refused what this    |
//   |   1007 invalid data, 1008 policy (rate limit,| client sends; a retry would repeat it |
//   |   slow consumer), 1009 too big, 1010         |                                       |
//   | 1015 TLS failure, 3001–3999, 4000–4999 (the  | stop; the app may call reconnect()    |
//   |   app's own codes), any other code           |                                       |
//
//   getToken, when given, is called before every reconnect (not only after 3000), so a
//   token that expired during a long outage is replaced too.
//
//   Backoff: full jitter, delay = random(0, min(capMs, baseMs · 2^attempt)), baseMs = 500,
//   capMs = 10 000. `attempt` counts reconnects since the last welcome (0 for the first):
//   the first retry after a connection that had been welcomed waits up to 500 ms, the next
//   ones (no welcome in between) up to 1 s, 2 s, 4 s, 8 s, then 10 s from the sixth on.
//   A welcome resets it. There is no limit on the number of retries.
//
//   Resume: every reconnect asks `since` = the last seq handed to the app (or the welcome's
//   seq if later, i.e. the point live delivery started) and `epoch` = the epoch that seq
//   belongs to; both are omitted until the first welcome. The client never hands the app a
//   seq twice or out of order: a `message` with seq ≤ the last one delivered is dropped.
//   A welcome with `resumed: true` is followed by the replay; `resumed: false` after a
//   resume was asked emits `gap` (unless the welcome proves nothing was missed: same epoch,
//   same seq) and continues from the welcome's seq. An `epoch` message resets the
//   remembered epoch and seq (seqs may start again from 1) and emits `epoch`.

export const DEFAULT_BACKOFF = Object.freeze({ baseMs: 500, capMs: 10000 });

// ---------------------------------------------------------------------------------------
// Pure core
// ---------------------------------------------------------------------------------------

/**
 * Full-jitter exponential backoff: a delay in [0, min(capMs, baseMs · 2^attempt)), whole ms.
 * `random` returns a number in [0, 1) like Math.random.
 */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const { baseMs, capMs } = { ...DEFAULT_BACKOFF, ...backoff };
  const n = Math.max(0, Math.floor(Number(attempt) || 0));
  // 2 ** n is Infinity for large n, and min() then gives the cap: no overflow to handle.
  const ceiling = Math.max(0, Math.min(capMs, baseMs * 2 ** n));
  const r = Math.min(Math.max(Number(random()) || 0, 0), 1);
  return Math.min(Math.floor(r * ceiling), Math.max(0, ceiling - 1));
}

/** Close codes after which the client reconnects with backoff (absent a going_away). */
export const RETRY_CODES = Object.freeze([1001, 1005, 1006, 1011, 1012, 1013, 1014]);
/** The close code wsgrace sends when a session's token expires. */
export const TOKEN_EXPIRED = 3000;

/**
 * The reconnect decision for the close of one underlying socket. Pure.
 *
 * close: { code, reason, wasClean }
 * ctx:   { appClosed,        // the app called close()
 *          goingAwayMs,      // reconnect_after_ms of a going_away on this socket, or null
 *          welcomed,         // this socket got a welcome (it stayed open)
 *          attempt,          // reconnects since the last welcome, before this one
 *          canRefreshToken,  // a getToken hook exists
 *          backoff, random }
 * → { action: "stop", why }
 *   | { action: "reconnect", delayMs, freshToken, attempt (the counter from now on), why }
 */
export function nextStep(close, ctx = {}) {
  const code = close && Number.isInteger(close.code) ? close.code : 1005;
  const backoff = { ...DEFAULT_BACKOFF, ...ctx.backoff };
  const random = ctx.random || Math.random;
  const attempt = ctx.welcomed ? 0 : Math.max(0, ctx.attempt || 0);
  const reconnect = (delayMs, freshToken, why) => ({
    action: "reconnect",
    delayMs,
    freshToken,
    attempt: attempt + 1,
    why,
  });
  const stop = (why) => ({ action: "stop", why });

  if (ctx.appClosed) return stop("closed by the app");
  const tokenExpired = code === TOKEN_EXPIRED;
  if (tokenExpired && !ctx.canRefreshToken) return stop("token expired and no getToken");
  if (ctx.goingAwayMs !== null && ctx.goingAwayMs !== undefined) {
    const d = Number(ctx.goingAwayMs);
    const delayMs = Number.isFinite(d) && d >= 0 ? Math.floor(d) : backoffDelay(0, backoff, random);
    return reconnect(delayMs, tokenExpired, "going_away");
  }
  if (tokenExpired) return reconnect(backoffDelay(0, backoff, random), true, "token expired");
  if (RETRY_CODES.includes(code)) {
    return reconnect(backoffDelay(attempt, backoff, random), false, `close ${code}`);
  }
  if (code === 1000) return stop("normal closure");
  if ([1002, 1003, 1007, 1008, 1009, 1010].includes(code)) {
    return stop(`close ${code}: the server refused what this client sends`);
  }
  return stop(`close ${code}`);
}

/**
 * Remembers where the app is in the room (epoch + last seq) and decides, for each frame
 * that carries a seq, whether the app gets it. Pure: no socket, no timer.
 */
export class SeqTracker {
  constructor() {
    this.epoch = null; // the epoch `seq` belongs to
    this.seq = null; // last seq handed to the app, or the welcome's seq if later; null: none
  }

  /** `{since, epoch}` for the next connection's URL, or null before the first welcome. */
  resumeParams() {
    if (this.seq === null) return null;
    return this.epoch === null ? { since: this.seq } : { since: this.seq, epoch: this.epoch };
  }

  /**
   * A welcome arrived. `askedResume`: this connection's URL carried `since`.
   * → { kind: "fresh" } | { kind: "resumed", missed }
   *   | { kind: "gap", previousEpoch, previousSeq, epoch, seq }
   *   | { kind: "not_resumed" } (resume refused but provably nothing missed)
   */
  onWelcome(welcome, askedResume) {
    const seq = toSeq(welcome.seq);
    const epoch = welcome.epoch === undefined ? null : welcome.epoch;
    if (askedResume && welcome.resumed === true) {
      // The replay (since+1 … welcome.seq) follows; keep `seq` so that it is delivered.
      if (epoch !== null) this.epoch = epoch;
      const missed = Number.isInteger(welcome.missed) ? welcome.missed : 0;
      return { kind: "resumed", missed };
    }
    const previousEpoch = this.epoch;
    const previousSeq = this.seq;
    this.epoch = epoch;
    this.seq = seq;
    if (!askedResume || previousSeq === null) return { kind: "fresh" };
    if (previousEpoch === epoch && previousSeq === seq) return { kind: "not_resumed" };
    return { kind: "gap", previousEpoch, previousSeq, epoch, seq };
  }

  /** A `message` frame: true if the app gets it (its seq is past the last one delivered). */
  onMessage(message) {
    const seq = toSeq(message.seq);
    if (seq === null) return false; // no usable seq: cannot be deduplicated, so dropped
    if (this.seq !== null && seq <= this.seq) return false;
    this.seq = seq;
    return true;
  }

  /** An `epoch` frame: the room's history restarted; seqs continue after `seq`. */
  onEpoch(frame) {
    this.epoch = frame.epoch === undefined ? null : frame.epoch;
    const seq = toSeq(frame.seq);
    this.seq = seq === null ? 0 : seq;
  }
}

function toSeq(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : null;
}

/**
 * The WebSocket URL for one connection: `base` plus room, name, token and (when resuming)
 * since and epoch. Existing query parameters of `base` are kept; http(s) becomes ws(s).
 */
export function buildUrl(base, { room, name, token, resume } = {}) {
  const url = new URL(String(base));
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol === "https:") url.protocol = "wss:";
  const set = (key, value) => {
    if (value === undefined || value === null || value === "") url.searchParams.delete(key);
    else url.searchParams.set(key, String(value));
  };
  set("room", room);
  set("name", name);
  set("token", token);
  set("since", resume ? resume.since : undefined);
  set("epoch", resume ? resume.epoch : undefined);
  return url.toString();
}

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

// ---------------------------------------------------------------------------------------
// Shell: the socket, the timers, the events
// ---------------------------------------------------------------------------------------

export class WsgraceClient extends EventTarget {
  #opts;
  #WebSocket;
  #setTimeout;
  #clearTimeout;
  #random;
  #tracker = new SeqTracker();
  #ws = null; // the current socket, or null
  #conn = null; // what we know of the current socket: {askedResume, opened, welcomed, goingAwayMs}
  #timer = null;
  #attempt = 0;
  #token;
  #appClosed = false;
  #generation = 0; // bumps on close()/reconnect() so that a pending getToken is ignored
  #state = "connecting";
  #welcomeName = null;

  constructor(options = {}) {
    super();
    this.#opts = { ...options, backoff: { ...DEFAULT_BACKOFF, ...options.backoff } };
    this.#WebSocket = options.WebSocketImpl || globalThis.WebSocket;
    this.#setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this.#clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this.#random = options.random || Math.random;
    this.#token = options.token;
    if (typeof this.#WebSocket !== "function") throw new TypeError("no WebSocket implementation");
    this.#open(!this.#token && typeof options.getToken === "function");
  }

  get state() {
    return this.#state;
  }
  get room() {
    return this.#opts.room;
  }
  get name() {
    return this.#welcomeName;
  }
  get epoch() {
    return this.#tracker.epoch;
  }
  get lastSeq() {
    return this.#tracker.seq;
  }

  send(text) {
    const ws = this.#ws;
    if (this.#state !== "open" || !ws || ws.readyState !== 1) return false;
    ws.send(String(text));
    return true;
  }

  close(code = 1000, reason = "") {
    if (this.#appClosed) return;
    this.#appClosed = true;
    this.#generation++;
    this.#cancelTimer();
    const ws = this.#ws;
    if (ws && ws.readyState <= 1) ws.close(code, reason);
    if (!ws) this.#conn = null;
    this.#setState("closed");
  }

  reconnect() {
    if (this.#state !== "closed") return;
    this.#appClosed = false;
    this.#generation++;
    this.#attempt = 0;
    this.#detach();
    this.#setState("reconnecting");
    this.#open(typeof this.#opts.getToken === "function");
  }

  // Opens a socket now, after fetching a token first if asked.
  async #open(freshToken) {
    const generation = this.#generation;
    if (freshToken) {
      try {
        const token = await this.#opts.getToken();
        if (generation !== this.#generation || this.#appClosed) return;
        this.#token = token === null || token === undefined ? undefined : String(token);
      } catch (err) {
        if (generation !== this.#generation || this.#appClosed) return;
        this.#emit("error", { code: "token", text: String((err && err.message) || err) });
        // No socket was opened: count it as a failed attempt and try again later.
        const delayMs = backoffDelay(this.#attempt, this.#opts.backoff, this.#random);
        this.#attempt++;
        this.#setState("reconnecting");
        this.#schedule(delayMs, true);
        return;
      }
    }
    const resume = this.#tracker.resumeParams();
    let ws;
    try {
      const url = buildUrl(this.#opts.url || defaultUrl(), {
        room: this.#opts.room,
        name: this.#opts.name || this.#welcomeName || undefined,
        token: this.#token,
        resume,
      });
      ws = new this.#WebSocket(url);
    } catch (err) {
      // A URL the WebSocket constructor rejects will not get better by retrying.
      this.#emit("error", { code: "connect", text: String((err && err.message) || err) });
      this.#setState("closed");
      return;
    }
    this.#ws = ws;
    this.#conn = { askedResume: resume !== null, opened: false, welcomed: false, goingAwayMs: null };
    ws.onopen = () => {
      if (ws === this.#ws) this.#conn.opened = true;
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#onFrame(event.data);
    };
    ws.onclose = (event) => this.#onClose(ws, event);
    ws.onerror = () => {}; // a close event always follows; it carries what we need
  }

  #onFrame(data) {
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    const conn = this.#conn;
    switch (frame.type) {
      case "welcome": {
        if (conn.welcomed) return; // once per connection
        conn.welcomed = true;
        conn.opened = true;
        this.#attempt = 0;
        if (typeof frame.name === "string" && NAME.test(frame.name)) this.#welcomeName = frame.name;
        const outcome = this.#tracker.onWelcome(frame, conn.askedResume);
        this.#setState("open");
        this.#emit("welcome", frame);
        if (outcome.kind === "resumed") this.#emit("resumed", { missed: outcome.missed });
        if (outcome.kind === "gap") {
          const { previousEpoch, previousSeq, epoch, seq } = outcome;
          this.#emit("gap", { previousEpoch, previousSeq, epoch, seq });
        }
        return;
      }
      case "message":
        if (this.#tracker.onMessage(frame)) {
          const { room, from, text, seq } = frame;
          this.#emit("message", { room, from, text, seq });
        }
        return;
      case "epoch":
        this.#tracker.onEpoch(frame);
        this.#emit("epoch", { room: frame.room, epoch: frame.epoch, seq: frame.seq });
        return;
      case "going_away": {
        const d = Number(frame.reconnect_after_ms);
        conn.goingAwayMs = Number.isFinite(d) && d >= 0 ? d : 0;
        this.#emit("going_away", { reconnectAfterMs: conn.goingAwayMs });
        return;
      }
      case "error":
        this.#emit("error", { code: frame.code, text: frame.text });
        return;
      default:
        return; // unknown types are ignored (SPEC: presence or other types may exist)
    }
  }

  #onClose(ws, event) {
    if (ws !== this.#ws) return; // a socket we already left behind
    const conn = this.#conn;
    this.#detach();
    const close = { code: event.code, reason: event.reason || "", wasClean: !!event.wasClean };
    const next = nextStep(close, {
      appClosed: this.#appClosed,
      goingAwayMs: conn.goingAwayMs,
      welcomed: conn.welcomed,
      attempt: this.#attempt,
      canRefreshToken: typeof this.#opts.getToken === "function",
      backoff: this.#opts.backoff,
      random: this.#random,
    });
    if (next.action === "reconnect") {
      this.#attempt = next.attempt;
      this.#setState("reconnecting");
    } else {
      this.#setState("closed");
    }
    this.#emit("close", { ...close, opened: conn.opened, welcomed: conn.welcomed, next });
    if (next.action === "reconnect" && !this.#appClosed) {
      this.#schedule(next.delayMs, next.freshToken || typeof this.#opts.getToken === "function");
    }
  }

  #detach() {
    const ws = this.#ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.#ws = null;
  }

  #schedule(delayMs, freshToken) {
    this.#cancelTimer();
    this.#timer = this.#setTimeout(() => {
      this.#timer = null;
      if (!this.#appClosed) this.#open(freshToken);
    }, delayMs);
  }

  #cancelTimer() {
    if (this.#timer !== null) this.#clearTimeout(this.#timer);
    this.#timer = null;
  }

  #setState(state) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#emit("state", { state, previous });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new TypeError("connect: `url` is required outside a browser page");
  return new URL("/ws", loc.href).toString();
}

/** Opens a client; see the header for the options, methods and events. */
export function connect(options) {
  return new WsgraceClient(options);
}
