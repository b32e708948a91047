// wsgrace.js — the browser client for a wsgrace chat server, as one plain ES module (no
// build step, no dependency). Served at `GET /wsgrace.js`.
//
// What it owns: one logical connection that survives the server going away — it reconnects
// with jittered backoff, honours `going_away`, asks the server why when an upgrade is
// refused, resumes with `since`/`epoch`, and hands the app each chat message once and in seq
// order. Two ways to use it:
//   - `connect({room})`: one room per connection (the chat protocol v1), as always;
//   - `connectRooms({rooms})`: many rooms over one connection (subprotocol `wsgrace.v2`):
//     join and leave while connected, each room resumed on its own, publishes with an `id`
//     that are resent after a reconnect until their copy or `ack` arrives.
// What it must not do: touch the DOM, or guess past what the server said.
//
// Shape: a pure core (`backoffDelay`, `SeqTracker`, `nextStep`, `refusalStep`, `buildUrl`,
// `RoomTracker`, `Outbox`, `RoomsCore`, exported and unit-tested without a socket) and a thin
// shell (`Link`, which owns the WebSocket, the timers and the refusal probe; `WsgraceClient`
// and `WsgraceRooms` on top of it) that only carries out what the core decides.
//
// ## API, one room (v1)
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
//                 // the old one. Required to survive close 3000 ("token expired") and an
//                 // upgrade refused with 401.
//     backoff,    // { baseMs: 500, capMs: 10000 }
//     WebSocketImpl,          // default globalThis.WebSocket; injectable for tests
//     setTimeout, clearTimeout, // default the global ones; injectable for tests
//     random,     // default Math.random; injectable for tests
//     fetch,      // for the refusal probe (below); default globalThis.fetch; null: no probe
//   });
//
//   client.send(text)   → true if handed to an open connection, false otherwise (nothing is
//                         queued while disconnected: the app decides what to do)
//   client.close(code = 1000, reason = "")  → stop for good: state `closed` at once, no
//                         reconnect; the socket's own close is still reported as `close`
//   client.reconnect()  → from state `closed`: connect again, resuming where it stopped
//   client.retryNow()   → "retry now": while `reconnecting` and waiting out the backoff, the
//                         next attempt starts at once (after the refusal probe under way, if
//                         any); from `closed`, as reconnect(). → true if an attempt was started
//                         or brought forward, false if one is already under way (or open)
//   client.state        → "connecting" | "open" | "reconnecting" | "closed"
//   client.room, client.name (the name of the last welcome), client.epoch, client.lastSeq
//
//   The client is an EventTarget; every event is a CustomEvent whose `detail` is:
//     state     { state, previous }   connecting (the first attempt) → open (welcome received)
//                                     → reconnecting (dropped; until the next welcome)
//                                     → closed (no more reconnects)
//     welcome   the welcome object    {room, name, epoch, seq, resumed?, missed?}
//     message   {room, from, text, seq, ts?}  each seq once, in increasing order (per
//                                     epoch); `ts`: ms since the Unix epoch, server clock
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
//     refused   {status, reason, next} the refusal probe's answer (see below); `next.action`
//                                     "stop" (state closed), "token" (reconnect now with a
//                                     fresh token) or "backoff" (the scheduled retry stands)
//
// ## API, many rooms over one connection (v2)
//
//   import { connectRooms } from "/wsgrace.js";
//   const client = connectRooms({
//     url, name, token, getToken, backoff, WebSocketImpl, setTimeout, clearTimeout, random,
//     fetch,      // as above. The upgrade is `GET /ws?name=N[&token=T]` offering the
//                 // subprotocol `wsgrace.v2`; rooms, since and epoch go in `join` frames
//     rooms,      // rooms to join at once: ["a", "b"] or [{room: "a", last: 50}, ...]
//     last,       // default `last` for `rooms` given as names (0: no recent messages)
//     idPrefix,   // prefix of publish ids (default: 8 random characters); the ids are
//                 // `${idPrefix}-${n}`, n counting from 1 per client
//   });
//
//   client.join(room, {last} = {})  → true if the room is new to the client (false: a bad
//                         name, or already joined or joining). Joined at once when connected,
//                         else on the next connection. `last` (0–1000): the room's last K
//                         messages come first, the recent conversation of a room just opened
//   client.leave(room)  → true if the room was the client's. `left` follows (the server's
//                         answer, or at once when not connected); publishes of the room not
//                         yet confirmed are dropped (listed in `left`'s `unsent`)
//   client.publish(room, text) → the message's id, or null (the room is not the client's,
//                         or the client is closed). The message is kept until its own copy
//                         (`message` with that id) or an `ack` with that id arrives, and sent
//                         again with the same id on every new connection, after the room's
//                         resume replay: the room gets it exactly once. Kept also while
//                         reconnecting; sent in the order published
//   client.signal(room, text) → true if sent (joined and open); never queued (typing)
//   client.presence(room) → the request's ref, or null when not joined; the answer is a
//                         `presence` event
//   client.close(code, reason), client.reconnect(), client.retryNow(), client.state,
//   client.name: as v1
//   client.rooms        → the names of the rooms the client is in or joining, in join order
//   client.roomState(room) → {status: "queued"|"joining"|"joined"|"waiting"|"leaving",
//                         epoch, seq} or null
//   client.pending      → [{room, id, text}] publishes not yet confirmed, oldest first
//
//   Events (CustomEvent, `detail`); every room event carries `room`:
//     state, close, refused, going_away   as v1 (the connection is `open` from its hello on)
//     hello     {name}                the server's first frame on each connection
//     joined    {room, epoch, seq, resumed?, missed?, last?}   the room is joined on this
//                                     connection (after every reconnect too); with `last`,
//                                     messages up to `seq` that follow are the recent ones
//     resumed   {room, missed}        the room resumed; `missed` messages are replayed next
//     gap       {room, previousEpoch, previousSeq, epoch, seq}   the room's resume was
//                                     refused: messages after previousSeq may be lost
//     left      {room, unsent}        the room was left (`unsent`: dropped publishes)
//     message   {room, from, text, seq, ts, id?}  each seq once, in order, per room; `id`
//                                     on the sender's own copy
//     delivered {room, id, seq, duplicate?}  a publish was confirmed by its copy (or by an
//                                     `ack`: `duplicate: true`) and left the queue
//     signal    {room, from, text}    another member's signal (not kept, not replayed)
//     presence  {room, members: [{name, connections}]}   the answer to presence(room), or
//                                     the room's list sent unasked after a storm of events
//                                     this client was too slow for: it replaces the list
//     presence_join, presence_leave {room, name}
//     epoch     {room, epoch, seq}    the room's history was reset; seqs continue from seq+1
//     error     {code, text, room?, ref?, id?, request?, retryInMs?, dropped?}  a refusal
//                                     (the connection stays open). `request`: "join",
//                                     "leave", "presence" or "publish" when known. For a
//                                     publish, `unavailable` (it reached nobody) keeps it
//                                     queued and retries it after `retryInMs` (and on the
//                                     next connection); any other code drops it
//                                     (`dropped: true`). A join refused with `unavailable`
//                                     is retried after `retryInMs`; with `forbidden`,
//                                     `bad_room`, `too_many_rooms` or `bad_request` the room
//                                     is given up (no longer in `rooms`). Client-side codes:
//                                     "token", "connect" as v1, and "protocol" (the server
//                                     did not agree to `wsgrace.v2`: state closed)
//
// ## Reconnect policy (decided by `nextStep`, for the close of each underlying socket)
//
//   | how the connection ended                     | what the client does                  |
//   |----------------------------------------------|---------------------------------------|
//   | the app called close()                       | stop (state closed)                   |
//   | a going_away came before the close, any code | reconnect after its reconnect_after_ms|
//   |                                              | (with 3000 and no getToken: stop)     |
//   | 1006 abnormal (network drop, server gone, or | reconnect after backoff; when the     |
//   |   the upgrade refused: HTTP 400/401/403/429/ | attempt never opened, ask the server  |
//   |   503; a browser cannot tell these apart)    | why first (the refusal probe below)   |
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
//   Refusal probe (decided by `refusalStep`): a browser cannot read the status of a refused
//   upgrade, so after an attempt that never opened the client asks the server why with a
//   plain `GET` of the same URL (http(s) instead of ws(s)), which answers the status and a
//   one-line reason the upgrade got (a v2 probe names its subprotocol in the header
//   `X-Wsgrace-Protocol: wsgrace.v2`; the server answers 426 when the upgrade would be
//   admitted). The next attempt waits for the answer (at most 5 s):
//
//   | the plain GET answered                       | what the client does                  |
//   |----------------------------------------------|---------------------------------------|
//   | 400 (bad name, query, ...), 403 (forbidden)  | stop with the reason (`refused`)      |
//   | 401 (token missing, bad or expired)          | getToken() once and reconnect now;    |
//   |                                              | stop with the reason when there is no |
//   |                                              | getToken, it gives no token, or the   |
//   |                                              | next attempt is refused with 401 again|
//   | 426 (admissible), 429, 503, anything else,   | the backoff retry stands              |
//   |   no answer (server down), none within 5 s   |                                       |
//
//   The probe is a same-origin request when the page is served by wsgrace; a server on
//   another origin must allow it by CORS, or the probe gets no answer and the client backs
//   off as it would without one. `fetch: null` turns the probe off.
//
//   Backoff: full jitter, delay = random(0, min(capMs, baseMs · 2^attempt)), baseMs = 500,
//   capMs = 10 000. `attempt` counts reconnects since the last welcome (0 for the first):
//   the first retry after a connection that had been welcomed waits up to 500 ms, the next
//   ones (no welcome in between) up to 1 s, 2 s, 4 s, 8 s, then 10 s from the sixth on.
//   A welcome (v2: a hello) resets it. There is no limit on the number of retries.
//
//   Resume: every reconnect asks `since` = the last seq handed to the app (or the welcome's
//   seq if later, i.e. the point live delivery started) and `epoch` = the epoch that seq
//   belongs to; both are omitted until the first welcome. The client never hands the app a
//   seq twice or out of order: a `message` with seq ≤ the last one delivered is dropped.
//   A welcome with `resumed: true` is followed by the replay; `resumed: false` after a
//   resume was asked emits `gap` (unless the welcome proves nothing was missed: same epoch,
//   same seq) and continues from the welcome's seq. An `epoch` message resets the
//   remembered epoch and seq (seqs may start again from 1) and emits `epoch`.
//   v2: the same per room, with `joined` for the welcome: after every reconnect each room is
//   joined again with its own `since`/`epoch` (a room never joined yet: with its `last`).
//   After a `last` join, since = the last seq handed to the app, or the joined seq when none
//   of the recent messages arrived yet.

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

// ---------------------------------------------------------------------------------------
// Pure core of the refusal probe and of many rooms (v2)
// ---------------------------------------------------------------------------------------

/** The status codes a refused upgrade's plain `GET` may answer, and what each means. */
export const REFUSAL_STOP = Object.freeze([400, 403]);

/** The header of a probe that names the subprotocol the refused upgrade offered. */
export const PROBE_PROTOCOL_HEADER = "X-Wsgrace-Protocol";
/** How long the next attempt waits for the refusal probe's answer. */
export const PROBE_TIMEOUT_MS = 5000;

/**
 * What to do with the answer of the refusal probe (the plain `GET` of a refused upgrade's
 * URL). Pure.
 *
 * answer: { status, reason } | null (no answer: network error, timeout)
 * ctx:    { canRefreshToken,  // a getToken hook exists
 *           askedToken }      // a 401 already made the client ask getToken since the last
 *                             // connection that opened
 * → { action: "stop", status, reason, why }
 *   | { action: "token", status, reason, why }     get a fresh token, reconnect now
 *   | { action: "backoff", status?, reason?, why } the scheduled retry stands
 */
export function refusalStep(answer, ctx = {}) {
  if (!answer || !Number.isInteger(answer.status)) return { action: "backoff", why: "no answer" };
  const status = answer.status;
  const given = typeof answer.reason === "string" && answer.reason;
  const reason = given ? answer.reason : `HTTP ${status}`;
  const step = (action, why) => ({ action, status, reason, why });
  if (REFUSAL_STOP.includes(status)) {
    return step("stop", `refused with ${status}: a retry would repeat it`);
  }
  if (status === 401) {
    if (!ctx.canRefreshToken) return step("stop", "401 and no getToken");
    if (ctx.askedToken) return step("stop", "401 again with a fresh token");
    return step("token", "401: ask getToken once");
  }
  return step("backoff", `answered ${status}: back off and retry`);
}

/** The plain-HTTP URL of a WebSocket URL (ws → http, wss → https), for the refusal probe. */
export function probeUrl(wsUrl) {
  const url = new URL(String(wsUrl));
  if (url.protocol === "ws:") url.protocol = "http:";
  if (url.protocol === "wss:") url.protocol = "https:";
  return url.toString();
}

/** The first line of a refusal's body, trimmed to 200 characters. */
export function reasonLine(body) {
  const line = String(body || "").split("\n").map((s) => s.trim()).find((s) => s) || "";
  return line.slice(0, 200);
}

/**
 * The WebSocket URL of a `wsgrace.v2` connection: `base` plus name and token only (a v2
 * upgrade with room, since or epoch in its query is refused); those of `base` are removed.
 */
export function buildRoomsUrl(base, { name, token } = {}) {
  const url = new URL(buildUrl(base, { name, token }));
  for (const key of ["room", "since", "epoch"]) url.searchParams.delete(key);
  return url.toString();
}

/**
 * One room of a v2 connection: where the app is in it (epoch + last seq) across joins and
 * reconnects, and which `message` frames the app gets. Like `SeqTracker`, with `joined` for
 * the welcome, and the `last` join: the recent messages (seq ≤ the joined seq) that follow
 * it are delivered too. Pure.
 */
export class RoomTracker {
  constructor() {
    this.epoch = null; // the epoch `seq` belongs to
    this.seq = null; // last seq handed to the app; null: none yet
    this.base = null; // the seq of the last fresh `joined`: live messages start after it
  }

  /** Where a resume starts: the last seq delivered, else the joined seq; null: never joined. */
  position() {
    return this.seq !== null ? this.seq : this.base;
  }

  /**
   * The fields of the next `join` frame: `{since, epoch}` once the room was joined,
   * else `{last}` when `last` > 0, else `{}`.
   */
  joinFields(last) {
    const since = this.position();
    if (since !== null) return this.epoch === null ? { since } : { since, epoch: this.epoch };
    const k = Number.isInteger(last) && last > 0 ? Math.min(last, 1000) : 0;
    return k > 0 ? { last: k } : {};
  }

  /**
   * A `joined` frame answered a join whose fields were `asked` (from `joinFields`).
   * → { kind: "fresh" } | { kind: "resumed", missed }
   *   | { kind: "gap", previousEpoch, previousSeq, epoch, seq } | { kind: "not_resumed" }
   */
  onJoined(frame, asked = {}) {
    const seq = toSeq(frame.seq);
    const epoch = frame.epoch === undefined ? null : frame.epoch;
    const askedResume = asked.since !== undefined;
    if (askedResume && frame.resumed === true) {
      if (epoch !== null) this.epoch = epoch;
      const missed = Number.isInteger(frame.missed) ? frame.missed : 0;
      return { kind: "resumed", missed };
    }
    const previousEpoch = this.epoch;
    const previousSeq = this.position();
    this.epoch = epoch;
    this.base = seq;
    // After a `last` join the recent messages (seq ≤ base) follow: deliver them.
    this.seq = asked.last !== undefined ? null : seq;
    if (!askedResume || previousSeq === null) return { kind: "fresh" };
    if (previousEpoch === epoch && previousSeq === seq) return { kind: "not_resumed" };
    return { kind: "gap", previousEpoch, previousSeq, epoch, seq };
  }

  /** A `message` frame: true if the app gets it (its seq is past the last one delivered). */
  onMessage(message) {
    const seq = toSeq(message.seq);
    if (seq === null) return false;
    if (this.seq !== null && seq <= this.seq) return false;
    this.seq = seq;
    return true;
  }

  /** An `epoch` frame: the room's history restarted; seqs continue after `seq`. */
  onEpoch(frame) {
    this.epoch = frame.epoch === undefined ? null : frame.epoch;
    const seq = toSeq(frame.seq);
    this.seq = seq === null ? 0 : seq;
    this.base = this.seq;
  }
}

/** A publish id: 1–64 characters of [A-Za-z0-9_.-] (the same rule as names). */
export const ID = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * The publishes not yet confirmed, oldest first. Each has an id (`${prefix}-${n}`), its room
 * and text, and a state: `queued` (to be sent on this connection once its room is joined),
 * `sent` (on this connection), `waiting` (refused with `unavailable`; sent again after a
 * delay). An entry leaves when its copy or an `ack` confirms it, or when it is dropped. Pure.
 */
export class Outbox {
  #entries = [];
  #prefix;
  #counter = 0;

  constructor(prefix = "m") {
    if (!ID.test(`${prefix}-1`) || String(prefix).length > 40) {
      throw new TypeError("idPrefix must be 1-40 characters of [A-Za-z0-9_.-]");
    }
    this.#prefix = String(prefix);
  }

  /** A new publish, queued. → the entry (a copy). */
  add(room, text) {
    const id = `${this.#prefix}-${++this.#counter}`;
    const entry = { id, room, text: String(text), state: "queued", attempts: 0 };
    this.#entries.push(entry);
    return { ...entry };
  }

  /** The room's queued and waiting entries, now `sent`, oldest first (to be sent). */
  take(room) {
    const out = [];
    for (const e of this.#entries) {
      if (e.room === room && e.state !== "sent") {
        e.state = "sent";
        out.push({ ...e });
      }
    }
    return out;
  }

  /** Its copy or an `ack` came: the entry leaves. → the entry, or null (not ours). */
  confirm(room, id) {
    return this.#remove((e) => e.room === room && e.id === id);
  }

  /** The server refused it for good: the entry leaves. → the entry or null. */
  drop(room, id) {
    const anyRoom = room === undefined || room === null;
    return this.#remove((e) => e.id === id && (anyRoom || e.room === room));
  }

  /** The room was left: its entries leave. → them ({id, text}), oldest first. */
  dropRoom(room) {
    const gone = this.#entries.filter((e) => e.room === room);
    this.#entries = this.#entries.filter((e) => e.room !== room);
    return gone.map(({ id, text }) => ({ id, text }));
  }

  /**
   * Refused with `unavailable` (it reached nobody): the entry waits `delayMs` (backoff by
   * its number of such refusals) before it is sent again. → {entry, delayMs} or null.
   */
  unavailable(id, backoff = DEFAULT_BACKOFF, random = Math.random) {
    const e = this.#entries.find((x) => x.id === id);
    if (!e) return null;
    const delayMs = backoffDelay(e.attempts, backoff, random);
    e.attempts++;
    e.state = "waiting";
    return { entry: { ...e }, delayMs };
  }

  /** Is this entry waiting for its retry? */
  isWaiting(id) {
    const e = this.#entries.find((x) => x.id === id);
    return !!e && e.state === "waiting";
  }

  /** The connection ended: everything not confirmed is queued for the next one. */
  disconnected() {
    for (const e of this.#entries) e.state = "queued";
  }

  /** The entries (copies), oldest first; of one room when given. */
  pending(room) {
    const mine = this.#entries.filter((e) => room === undefined || e.room === room);
    return mine.map((e) => ({ ...e }));
  }

  #remove(match) {
    const i = this.#entries.findIndex(match);
    if (i < 0) return null;
    const [e] = this.#entries.splice(i, 1);
    return { ...e };
  }
}

/**
 * The rooms of one v2 client, sans I/O: it takes the app's calls (join, leave, publish,
 * signal, presence), the server's frames and the connection's start and end, and answers
 * what to do — frames to send, events to emit, timers to set — as
 * `{ send: [frame], emit: [[type, detail]], timers: [{kind: "publish", id, delayMs} |
 * {kind: "join", room, delayMs}] }`. The shell carries that out. Pure: no socket, no timer.
 *
 * A room's status on the current connection: `queued` (to be joined when connected),
 * `joining` (join sent), `joined`, `waiting` (the join was refused with `unavailable`; a
 * timer retries it), `leaving` (leave sent; the room is kept until `left`).
 */
export class RoomsCore {
  #rooms = new Map(); // room → {wanted, last, tracker, status, asked, flushAt, joinAttempts}
  #outbox;
  #refs = new Map(); // ref → {request, room} of this connection's requests
  #nextRef = 0;
  #connected = false;
  #backoff;
  #random;

  constructor({ idPrefix = "m", backoff = DEFAULT_BACKOFF, random = Math.random } = {}) {
    this.#outbox = new Outbox(idPrefix);
    this.#backoff = { ...DEFAULT_BACKOFF, ...backoff };
    this.#random = random;
  }

  get connected() {
    return this.#connected;
  }

  /** The rooms the app is in or joining (not those being left), in join order. */
  rooms() {
    return [...this.#rooms].filter(([, r]) => r.wanted).map(([name]) => name);
  }

  roomState(room) {
    const r = this.#rooms.get(room);
    if (!r) return null;
    const { status, wanted, tracker } = r;
    return { status, wanted, epoch: tracker.epoch, seq: tracker.position() };
  }

  pending() {
    return this.#outbox.pending().map(({ room, id, text }) => ({ room, id, text }));
  }

  // --- the app ---

  /** → effects with `ok` (false: a bad name, or the room is the app's already). */
  join(room, { last } = {}) {
    const fx = effects();
    if (typeof room !== "string" || !NAME.test(room)) return { ...fx, ok: false };
    const k = Number.isInteger(last) && last > 0 ? Math.min(last, 1000) : 0;
    const r = this.#rooms.get(room);
    if (r && r.wanted) return { ...fx, ok: false };
    if (r) {
      // Being left: join again once `left` comes (the server answers in order).
      r.wanted = true;
      r.last = k;
      r.tracker = new RoomTracker();
      return { ...fx, ok: true };
    }
    this.#rooms.set(room, newRoom(k));
    if (this.#connected) this.#sendJoin(room, fx);
    return { ...fx, ok: true };
  }

  /** → effects with `ok` (false: not the app's room). */
  leave(room) {
    const fx = effects();
    const r = this.#rooms.get(room);
    if (!r || !r.wanted) return { ...fx, ok: false };
    r.wanted = false;
    r.unsent = [...r.unsent, ...this.#outbox.dropRoom(room)];
    if (this.#connected && (r.status === "joining" || r.status === "joined")) {
      const ref = this.#ref("l", "leave", room);
      r.status = "leaving";
      r.flushAt = null;
      fx.send.push({ type: "leave", room, ref });
    } else if (r.status !== "leaving") {
      this.#forget(room, fx);
    }
    return { ...fx, ok: true };
  }

  /** → effects with `id` (null: not the app's room). Sent now when the room is joined. */
  publish(room, text) {
    const fx = effects();
    const r = this.#rooms.get(room);
    if (!r || !r.wanted) return { ...fx, id: null };
    const entry = this.#outbox.add(room, text);
    if (this.#ready(r)) this.#flush(room, fx);
    return { ...fx, id: entry.id };
  }

  /** → effects with `ok` (false: the room is not joined on an open connection). */
  signal(room, text) {
    const fx = effects();
    const r = this.#rooms.get(room);
    if (!this.#connected || !r || !r.wanted || r.status !== "joined") return { ...fx, ok: false };
    fx.send.push({ type: "signal", room, text: String(text) });
    return { ...fx, ok: true };
  }

  /** → effects with `ref` (null: the room is not joined on an open connection). */
  presence(room) {
    const fx = effects();
    const r = this.#rooms.get(room);
    if (!this.#connected || !r || !r.wanted || r.status !== "joined") return { ...fx, ref: null };
    const ref = this.#ref("p", "presence", room);
    fx.send.push({ type: "presence", room, ref });
    return { ...fx, ref };
  }

  // --- the connection ---

  /** The connection's hello came: join every room. */
  connected() {
    const fx = effects();
    this.#connected = true;
    for (const [room, r] of this.#rooms) if (r.wanted) this.#sendJoin(room, fx);
    return fx;
  }

  /** The connection ended: rooms and publishes wait for the next one. */
  disconnected() {
    const fx = effects();
    this.#connected = false;
    this.#refs.clear();
    this.#outbox.disconnected();
    for (const [room, r] of [...this.#rooms]) {
      r.flushAt = null;
      if (r.wanted) r.status = "queued";
      else this.#forget(room, fx); // the server forgot the room with the connection
    }
    return fx;
  }

  /** A join's retry timer fired. */
  retryJoin(room) {
    const fx = effects();
    const r = this.#rooms.get(room);
    if (this.#connected && r && r.wanted && r.status === "waiting") this.#sendJoin(room, fx);
    return fx;
  }

  /** A publish's retry timer fired. */
  retryPublish(id) {
    const fx = effects();
    if (!this.#outbox.isWaiting(id)) return fx;
    const entry = this.#outbox.pending().find((e) => e.id === id);
    const r = entry && this.#rooms.get(entry.room);
    if (r && this.#ready(r)) this.#flush(entry.room, fx);
    return fx;
  }

  // --- the server ---

  /** A server frame (parsed JSON) other than hello and going_away. */
  frame(f) {
    const fx = effects();
    if (!f || typeof f !== "object") return fx;
    const room = typeof f.room === "string" ? f.room : null;
    const r = room === null ? undefined : this.#rooms.get(room);
    const live = !!r && r.wanted && r.status === "joined";
    switch (f.type) {
      case "joined":
        if (r && r.status === "joining" && (f.ref === undefined || this.#refs.has(f.ref))) {
          this.#refs.delete(f.ref);
          this.#onJoined(room, r, f, fx);
        }
        return fx;
      case "left":
        if (r && r.status === "leaving") {
          this.#refs.delete(f.ref);
          this.#onLeft(room, r, fx);
        }
        return fx;
      case "message": {
        if (!live) return fx;
        if (typeof f.id === "string") {
          const mine = this.#outbox.confirm(room, f.id);
          if (mine) fx.emit.push(["delivered", { room, id: f.id, seq: f.seq }]);
        }
        if (r.tracker.onMessage(f)) {
          const m = { room, from: f.from, text: f.text, seq: f.seq, ts: f.ts };
          if (typeof f.id === "string") m.id = f.id;
          fx.emit.push(["message", m]);
        }
        const seq = toSeq(f.seq);
        if (r.flushAt !== null && seq !== null && seq >= r.flushAt) {
          r.flushAt = null;
          this.#flush(room, fx);
        }
        return fx;
      }
      case "ack":
        if (room !== null && typeof f.id === "string" && this.#outbox.confirm(room, f.id)) {
          fx.emit.push(["delivered", { room, id: f.id, seq: f.seq, duplicate: true }]);
        }
        return fx;
      case "signal":
        if (live) fx.emit.push(["signal", { room, from: f.from, text: f.text }]);
        return fx;
      case "presence":
        if (f.ref !== undefined) this.#refs.delete(f.ref);
        if (live) {
          const members = Array.isArray(f.members) ? f.members : [];
          fx.emit.push(["presence", { room, members }]);
        }
        return fx;
      case "presence_join":
      case "presence_leave":
        if (live) fx.emit.push([f.type, { room, name: f.name }]);
        return fx;
      case "epoch":
        if (live) {
          r.tracker.onEpoch(f);
          fx.emit.push(["epoch", { room, epoch: f.epoch, seq: f.seq }]);
        }
        return fx;
      case "error":
        this.#onError(f, fx);
        return fx;
      default:
        return fx; // unknown types are ignored
    }
  }

  #onJoined(room, r, f, fx) {
    r.status = "joined";
    r.joinAttempts = 0;
    const outcome = r.tracker.onJoined(f, r.asked);
    const joined = { room, epoch: f.epoch, seq: f.seq };
    if (f.resumed !== undefined) joined.resumed = f.resumed;
    if (f.missed !== undefined) joined.missed = f.missed;
    if (r.asked.last !== undefined) joined.last = r.asked.last;
    fx.emit.push(["joined", joined]);
    if (outcome.kind === "resumed") fx.emit.push(["resumed", { room, missed: outcome.missed }]);
    if (outcome.kind === "gap") {
      const { previousEpoch, previousSeq, epoch, seq } = outcome;
      fx.emit.push(["gap", { room, previousEpoch, previousSeq, epoch, seq }]);
    }
    // Publishes wait for the resume's replay: a copy in it confirms them without a resend.
    const end = toSeq(f.seq);
    const at = r.tracker.position();
    if (outcome.kind === "resumed" && end !== null && at !== null && at < end) r.flushAt = end;
    else this.#flush(room, fx);
  }

  #onLeft(room, r, fx) {
    if (r.wanted) {
      // Joined again while leaving: the new join goes out now.
      r.status = "queued";
      fx.emit.push(["left", { room, unsent: r.unsent || [] }]);
      r.unsent = [];
      if (this.#connected) this.#sendJoin(room, fx);
      return;
    }
    this.#forget(room, fx);
  }

  #onError(f, fx) {
    const detail = { code: f.code, text: f.text };
    for (const key of ["room", "ref", "id"]) if (f[key] !== undefined) detail[key] = f[key];
    const request = f.ref !== undefined ? this.#refs.get(f.ref) : undefined;
    if (request) this.#refs.delete(f.ref);
    if (request) detail.request = request.request;
    else if (typeof f.id === "string") detail.request = "publish";

    if (typeof f.id === "string" && this.#outbox.pending().some((e) => e.id === f.id)) {
      detail.request = "publish";
      if (f.code === "unavailable") {
        const { delayMs } = this.#outbox.unavailable(f.id, this.#backoff, this.#random);
        detail.retryInMs = delayMs;
        fx.timers.push({ kind: "publish", id: f.id, delayMs });
      } else {
        this.#outbox.drop(f.room, f.id);
        detail.dropped = true;
      }
      fx.emit.push(["error", detail]);
      return;
    }
    const r = request ? this.#rooms.get(request.room) : undefined;
    if (request && request.request === "join" && r && r.status === "joining") {
      if (f.code === "unavailable") {
        const delayMs = backoffDelay(r.joinAttempts, this.#backoff, this.#random);
        r.joinAttempts++;
        r.status = "waiting";
        detail.retryInMs = delayMs;
        fx.emit.push(["error", detail]);
        fx.timers.push({ kind: "join", room: request.room, delayMs });
        return;
      }
      if (f.code === "already_joined") {
        // The server has the room on this connection already: take it as joined.
        r.status = "joined";
        fx.emit.push(["error", detail]);
        this.#flush(request.room, fx);
        return;
      }
      // forbidden, bad_room, too_many_rooms, bad_request: a retry would repeat it.
      this.#rooms.delete(request.room);
      detail.unsent = this.#outbox.dropRoom(request.room);
      fx.emit.push(["error", detail]);
      return;
    }
    if (request && request.request === "leave" && r && r.status === "leaving") {
      // The server does not have the room (any more): left all the same.
      if (f.code !== "not_joined") fx.emit.push(["error", detail]);
      this.#onLeft(request.room, r, fx);
      return;
    }
    fx.emit.push(["error", detail]);
  }

  #ready(r) {
    return this.#connected && r.wanted && r.status === "joined" && r.flushAt === null;
  }

  #flush(room, fx) {
    for (const e of this.#outbox.take(room)) {
      fx.send.push({ type: "publish", room, text: e.text, id: e.id });
    }
  }

  #sendJoin(room, fx) {
    const r = this.#rooms.get(room);
    const ref = this.#ref("j", "join", room);
    r.asked = r.tracker.joinFields(r.last);
    r.status = "joining";
    r.flushAt = null;
    fx.send.push({ type: "join", room, ...r.asked, ref });
  }

  #forget(room, fx) {
    const r = this.#rooms.get(room);
    this.#rooms.delete(room);
    fx.emit.push(["left", { room, unsent: (r && r.unsent) || [] }]);
  }

  #ref(prefix, request, room) {
    const ref = `${prefix}${++this.#nextRef}`;
    this.#refs.set(ref, { request, room });
    return ref;
  }
}

function newRoom(last) {
  return {
    wanted: true, // the app wants it (false: being left)
    last, // `last` of its first join
    tracker: new RoomTracker(),
    status: "queued",
    asked: {}, // the fields of the join sent on this connection
    flushAt: null, // the seq whose arrival ends the resume's replay: publishes wait for it
    joinAttempts: 0, // joins refused with `unavailable` in a row
    unsent: [], // publishes dropped by leave(), for the `left` event
  };
}

function effects() {
  return { send: [], emit: [], timers: [] };
}

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

// ---------------------------------------------------------------------------------------
// Shell: the socket, the timers, the events
// ---------------------------------------------------------------------------------------

/**
 * One logical connection, for both clients: opens the sockets (fetching a token first when
 * asked), reports their frames to its host, decides each close with `nextStep`, asks the
 * server why an upgrade was refused (`refusalStep`), and keeps the state. The host
 * (`WsgraceClient`, `WsgraceRooms`) gives it:
 *   url(token)      → the URL of the next attempt (called right before each socket opens)
 *   protocol        → the subprotocol to offer, or undefined
 *   onOpen(ws)      → the upgrade succeeded
 *   onFrame(frame)  → a parsed server frame (an object) of the current socket
 *   onDrop()        → the current socket is gone (before the close is decided)
 *   emit(type, detail)
 */
export class Link {
  #opts;
  #host;
  #WebSocket;
  #setTimeout;
  #clearTimeout;
  #random;
  #fetch;
  #ws = null; // the current socket, or null
  #conn = null; // what we know of the current socket: {url, opened, welcomed, goingAwayMs}
  #timer = null;
  #attempt = 0;
  #token;
  #appClosed = false;
  #generation = 0; // bumps on close()/reconnect() so that a pending getToken or probe is ignored
  #state = "connecting";
  #probe = null; // the refusal probe under way: {waiting: null | freshToken}
  #askedToken = false; // a 401 made us ask getToken since the last welcome

  constructor(options, host) {
    this.#opts = { ...options, backoff: { ...DEFAULT_BACKOFF, ...options.backoff } };
    this.#host = host;
    this.#WebSocket = options.WebSocketImpl || globalThis.WebSocket;
    this.#setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this.#clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this.#random = options.random || Math.random;
    const fetchImpl = options.fetch === undefined ? globalThis.fetch : options.fetch;
    // Called unbound: a browser's fetch called as a method of another object throws
    // "Illegal invocation", which would look like a probe without an answer.
    this.#fetch = typeof fetchImpl === "function" ? (url, init) => fetchImpl(url, init) : null;
    this.#token = options.token;
    if (typeof this.#WebSocket !== "function") throw new TypeError("no WebSocket implementation");
  }

  /** Opens the first socket (after getToken when no token was given). */
  start() {
    this.#open(!this.#token && this.#canRefreshToken());
  }

  get state() {
    return this.#state;
  }
  get appClosed() {
    return this.#appClosed;
  }
  /** The current socket had its welcome (v1) or hello (v2). */
  get established() {
    return !!this.#conn && this.#conn.welcomed;
  }

  /** The host got the welcome (v1) or hello (v2): the connection is open. */
  establish() {
    const conn = this.#conn;
    conn.welcomed = true;
    conn.opened = true;
    this.#attempt = 0;
    this.#askedToken = false;
    this.#setState("open");
  }

  /** A `going_away` came on the current socket. */
  goingAway(ms) {
    this.#conn.goingAwayMs = ms;
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
    this.#probe = null;
    this.#cancelTimer();
    const ws = this.#ws;
    if (ws && ws.readyState <= 1) ws.close(code, reason);
    if (!ws) this.#conn = null;
    this.#setState("closed");
  }

  /**
   * Reconnects at once instead of waiting out the backoff. While `reconnecting` with the
   * next attempt scheduled: that attempt starts now (once the refusal probe under way has
   * answered, so a 400/403 still stops). From `closed`: as reconnect(). → true if an attempt
   * was started or brought forward; false when one is already under way or the connection
   * is open.
   */
  retryNow() {
    if (this.#state === "closed") {
      this.reconnect();
      return true;
    }
    if (this.#state !== "reconnecting" || this.#timer === null) return false;
    this.#cancelTimer();
    const freshToken = this.#canRefreshToken();
    if (this.#probe) this.#probe.waiting = freshToken; // open once the probe answered
    else this.#open(freshToken);
    return true;
  }

  reconnect() {
    if (this.#state !== "closed") return;
    this.#appClosed = false;
    this.#generation++;
    this.#probe = null;
    this.#attempt = 0;
    this.#askedToken = false;
    this.#detach();
    this.#setState("reconnecting");
    this.#open(this.#canRefreshToken());
  }

  /** The host gives up on the connection (e.g. the server does not speak its protocol). */
  fail(code, text, closeCode = 1000) {
    this.#host.emit("error", { code, text });
    this.close(closeCode, "");
  }

  #canRefreshToken() {
    return typeof this.#opts.getToken === "function";
  }

  // Opens a socket now, after fetching a token first if asked. With `unauthorized` (the
  // refusal of a 401), a hook that gives no token stops the client.
  async #open(freshToken, unauthorized = null) {
    const generation = this.#generation;
    if (freshToken) {
      try {
        const token = await this.#opts.getToken();
        if (generation !== this.#generation || this.#appClosed) return;
        const none = token === null || token === undefined || token === "";
        this.#token = none ? undefined : String(token);
        if (unauthorized && none) {
          const why = "401 and getToken gave no token";
          this.#stopRefused({ ...unauthorized, action: "stop", why });
          return;
        }
      } catch (err) {
        if (generation !== this.#generation || this.#appClosed) return;
        this.#host.emit("error", { code: "token", text: String((err && err.message) || err) });
        // No socket was opened: count it as a failed attempt and try again later.
        const delayMs = backoffDelay(this.#attempt, this.#opts.backoff, this.#random);
        this.#attempt++;
        this.#setState("reconnecting");
        this.#schedule(delayMs, true);
        return;
      }
    }
    let ws;
    let url;
    try {
      url = this.#host.url(this.#token);
      const protocol = this.#host.protocol;
      ws = protocol ? new this.#WebSocket(url, protocol) : new this.#WebSocket(url);
    } catch (err) {
      // A URL the WebSocket constructor rejects will not get better by retrying.
      this.#host.emit("error", { code: "connect", text: String((err && err.message) || err) });
      this.#setState("closed");
      return;
    }
    this.#ws = ws;
    this.#conn = { url, opened: false, welcomed: false, goingAwayMs: null };
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#conn.opened = true;
      this.#host.onOpen(ws);
    };
    ws.onmessage = (event) => {
      if (ws !== this.#ws || typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this.#host.onFrame(frame);
    };
    ws.onclose = (event) => this.#onClose(ws, event);
    ws.onerror = () => {}; // a close event always follows; it carries what we need
  }

  #onClose(ws, event) {
    if (ws !== this.#ws) return; // a socket we already left behind
    const conn = this.#conn;
    this.#detach();
    this.#host.onDrop();
    const close = { code: event.code, reason: event.reason || "", wasClean: !!event.wasClean };
    const next = nextStep(close, {
      appClosed: this.#appClosed,
      goingAwayMs: conn.goingAwayMs,
      welcomed: conn.welcomed,
      attempt: this.#attempt,
      canRefreshToken: this.#canRefreshToken(),
      backoff: this.#opts.backoff,
      random: this.#random,
    });
    if (next.action === "reconnect") {
      this.#attempt = next.attempt;
      this.#setState("reconnecting");
    } else {
      this.#setState("closed");
    }
    this.#host.emit("close", { ...close, opened: conn.opened, welcomed: conn.welcomed, next });
    if (next.action === "reconnect" && !this.#appClosed) {
      if (!conn.opened && this.#fetch) this.#startProbe(conn.url);
      this.#schedule(next.delayMs, next.freshToken || this.#canRefreshToken());
    }
  }

  // Asks the server why the upgrade to `url` was refused; the next attempt waits for it.
  #startProbe(url) {
    const generation = this.#generation;
    const probe = { waiting: null };
    this.#probe = probe;
    let timeoutId = null;
    const timeout = new Promise((resolve) => {
      timeoutId = this.#setTimeout(() => resolve(null), PROBE_TIMEOUT_MS);
    });
    const ask = (async () => {
      const init = { method: "GET", cache: "no-store", credentials: "same-origin" };
      // A fetch cannot offer a subprotocol: the header tells the server which one the
      // upgrade offered (a v1 probe sends none, so it stays a CORS-simple request).
      if (this.#host.protocol) init.headers = { [PROBE_PROTOCOL_HEADER]: this.#host.protocol };
      const res = await this.#fetch(probeUrl(url), init);
      let body = "";
      try {
        body = await res.text();
      } catch {
        // the status is what matters
      }
      return { status: res.status, reason: reasonLine(body) };
    })().catch(() => null);
    Promise.race([ask, timeout]).then((answer) => {
      this.#clearTimeout(timeoutId);
      if (this.#probe !== probe) return;
      this.#probe = null;
      if (generation !== this.#generation || this.#appClosed) return;
      this.#onProbe(answer, probe.waiting);
    });
  }

  #onProbe(answer, waiting) {
    const step = refusalStep(answer, {
      canRefreshToken: this.#canRefreshToken(),
      askedToken: this.#askedToken,
    });
    if (step.action === "stop") {
      this.#stopRefused(step);
      return;
    }
    if (step.status !== undefined) {
      this.#host.emit("refused", { status: step.status, reason: step.reason, next: step });
    }
    if (step.action === "token") {
      this.#askedToken = true;
      this.#cancelTimer();
      this.#open(true, { status: step.status, reason: step.reason });
      return;
    }
    if (waiting !== null) this.#open(waiting); // the backoff had run out meanwhile
  }

  // The refusal is final: `refused` says why, and the state is closed.
  #stopRefused(step) {
    this.#host.emit("refused", { status: step.status, reason: step.reason, next: step });
    this.#cancelTimer();
    this.#setState("closed");
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
      if (this.#appClosed) return;
      if (this.#probe) this.#probe.waiting = freshToken; // open once the probe answered
      else this.#open(freshToken);
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
    this.#host.emit("state", { state, previous });
  }
}

/** One room over one connection (chat protocol v1). See the header for the API. */
export class WsgraceClient extends EventTarget {
  #opts;
  #link;
  #tracker = new SeqTracker();
  #askedResume = false; // the current socket's URL carried `since`
  #welcomeName = null;

  constructor(options = {}) {
    super();
    this.#opts = { ...options };
    this.#link = new Link(options, {
      url: (token) => {
        const resume = this.#tracker.resumeParams();
        const url = buildUrl(this.#opts.url || defaultUrl(), {
          room: this.#opts.room,
          name: this.#opts.name || this.#welcomeName || undefined,
          token,
          resume,
        });
        this.#askedResume = resume !== null;
        return url;
      },
      protocol: undefined,
      onOpen: () => {},
      onFrame: (frame) => this.#onFrame(frame),
      onDrop: () => {},
      emit: (type, detail) => this.#emit(type, detail),
    });
    this.#link.start();
  }

  get state() {
    return this.#link.state;
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
    return this.#link.send(text);
  }

  close(code = 1000, reason = "") {
    this.#link.close(code, reason);
  }

  reconnect() {
    this.#link.reconnect();
  }

  retryNow() {
    return this.#link.retryNow();
  }

  #onFrame(frame) {
    switch (frame.type) {
      case "welcome": {
        if (this.#link.established) return; // once per connection
        if (typeof frame.name === "string" && NAME.test(frame.name)) this.#welcomeName = frame.name;
        const outcome = this.#tracker.onWelcome(frame, this.#askedResume);
        this.#link.establish();
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
          const m = { room, from, text, seq };
          if (frame.ts !== undefined) m.ts = frame.ts;
          this.#emit("message", m);
        }
        return;
      case "epoch":
        this.#tracker.onEpoch(frame);
        this.#emit("epoch", { room: frame.room, epoch: frame.epoch, seq: frame.seq });
        return;
      case "going_away": {
        const ms = goingAwayDelay(frame);
        this.#link.goingAway(ms);
        this.#emit("going_away", { reconnectAfterMs: ms });
        return;
      }
      case "error":
        this.#emit("error", { code: frame.code, text: frame.text });
        return;
      default:
        return; // unknown types are ignored (SPEC: presence or other types may exist)
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** The subprotocol of many rooms over one connection. */
export const V2 = "wsgrace.v2";

/** Many rooms over one connection (`wsgrace.v2`). See the header for the API. */
export class WsgraceRooms extends EventTarget {
  #opts;
  #link;
  #core;
  #helloName = null;
  #setTimeout;
  #clearTimeout;
  #timers = new Map(); // "publish:ID" | "join:ROOM" → timer id

  constructor(options = {}) {
    super();
    this.#opts = { ...options };
    this.#setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this.#clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this.#core = new RoomsCore({
      idPrefix: options.idPrefix || randomPrefix(options.random),
      backoff: options.backoff,
      random: options.random,
    });
    for (const item of options.rooms || []) {
      const spec = typeof item === "string" ? { room: item, last: options.last } : item || {};
      this.#core.join(spec.room, { last: spec.last === undefined ? options.last : spec.last });
    }
    this.#link = new Link(options, {
      url: (token) =>
        buildRoomsUrl(this.#opts.url || defaultUrl(), {
          name: this.#opts.name || this.#helloName || undefined,
          token,
        }),
      protocol: V2,
      onOpen: (ws) => {
        // A server that does not know v2 answers without it (and would speak v1).
        if (typeof ws.protocol === "string" && ws.protocol !== V2) {
          this.#link.fail("protocol", `the server did not agree to ${V2}`);
        }
      },
      onFrame: (frame) => this.#onFrame(frame),
      onDrop: () => this.#apply(this.#core.disconnected()),
      emit: (type, detail) => this.#emit(type, detail),
    });
    this.#link.start();
  }

  get state() {
    return this.#link.state;
  }
  get name() {
    return this.#helloName;
  }
  get rooms() {
    return this.#core.rooms();
  }
  roomState(room) {
    const s = this.#core.roomState(room);
    if (!s || !s.wanted) return null;
    return { status: s.status, epoch: s.epoch, seq: s.seq };
  }
  get pending() {
    return this.#core.pending();
  }

  join(room, { last } = {}) {
    const fx = this.#core.join(room, { last });
    this.#apply(fx);
    return fx.ok;
  }

  leave(room) {
    const fx = this.#core.leave(room);
    this.#apply(fx);
    return fx.ok;
  }

  publish(room, text) {
    if (this.#link.appClosed) return null;
    const fx = this.#core.publish(room, text);
    this.#apply(fx);
    return fx.id;
  }

  signal(room, text) {
    const fx = this.#core.signal(room, text);
    this.#apply(fx);
    return fx.ok;
  }

  presence(room) {
    const fx = this.#core.presence(room);
    this.#apply(fx);
    return fx.ref;
  }

  close(code = 1000, reason = "") {
    for (const id of this.#timers.values()) this.#clearTimeout(id);
    this.#timers.clear();
    this.#link.close(code, reason);
  }

  reconnect() {
    this.#link.reconnect();
  }

  retryNow() {
    return this.#link.retryNow();
  }

  #onFrame(frame) {
    switch (frame.type) {
      case "hello": {
        if (this.#link.established) return; // once per connection
        if (typeof frame.name === "string" && NAME.test(frame.name)) this.#helloName = frame.name;
        this.#link.establish();
        this.#emit("hello", { name: frame.name });
        this.#apply(this.#core.connected());
        return;
      }
      case "going_away": {
        const ms = goingAwayDelay(frame);
        this.#link.goingAway(ms);
        this.#emit("going_away", { reconnectAfterMs: ms });
        return;
      }
      case "welcome":
        // A server speaking v1 although it agreed to v2: nothing of it makes sense here.
        this.#link.fail("protocol", `the server answered with a v1 welcome on ${V2}`);
        return;
      default:
        if (!this.#link.established) return;
        this.#apply(this.#core.frame(frame));
    }
  }

  // Carries out what the core decided: frames first (in order), then events, then timers.
  #apply(fx) {
    for (const frame of fx.send) this.#link.send(JSON.stringify(frame));
    for (const [type, detail] of fx.emit) this.#emit(type, detail);
    for (const t of fx.timers) {
      const key = t.kind === "publish" ? `publish:${t.id}` : `join:${t.room}`;
      const old = this.#timers.get(key);
      if (old !== undefined) this.#clearTimeout(old);
      const id = this.#setTimeout(() => {
        this.#timers.delete(key);
        const core = this.#core;
        this.#apply(t.kind === "publish" ? core.retryPublish(t.id) : core.retryJoin(t.room));
      }, t.delayMs);
      this.#timers.set(key, id);
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function goingAwayDelay(frame) {
  const d = Number(frame.reconnect_after_ms);
  return Number.isFinite(d) && d >= 0 ? d : 0;
}

// 8 characters of [a-z0-9], from crypto when there is one (ids must not collide between
// the tabs of one name: the server deduplicates per room, name and id).
function randomPrefix(random) {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = new Uint8Array(8);
  if (!random && globalThis.crypto && typeof globalThis.crypto.getRandomValues === "function") {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    const r = random || Math.random;
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(r() * 256) & 255;
  }
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new TypeError("connect: `url` is required outside a browser page");
  return new URL("/ws", loc.href).toString();
}

/** Opens a one-room (v1) client; see the header for the options, methods and events. */
export function connect(options) {
  return new WsgraceClient(options);
}

/** Opens a many-rooms (`wsgrace.v2`) client; see the header for the options, methods and events. */
export function connectRooms(options) {
  return new WsgraceRooms(options);
}
