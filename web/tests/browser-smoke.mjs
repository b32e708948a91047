// A browser smoke check of web/chat.html + web/wsgrace.js with no Rust build: a small
// stand-in chat server in Node (HTTP + a minimal RFC 6455 server speaking the wsgrace chat
// protocol v1 and, for a client offering it, wsgrace.v2 (several rooms), with controls to go
// away, drop connections, lose history) and headless Chromium driven over WebDriver by plain
// HTTP calls to chromedriver: the one-room page, then the several-rooms page with two
// browsers (ann in a and b, bob in b).
//
//   node web/tests/browser-smoke.mjs        (needs /usr/bin/chromium and /usr/bin/chromedriver)
//
// Not part of `node --test web/tests/` (the name does not end in .test.mjs): it starts a
// browser, which the unit suite must not need. The real-server check stays tests/browser.rs.

import http from "node:http";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import net from "node:net";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DEADLINE_MS = 10000;

// --- a stand-in wsgrace server ---------------------------------------------------------

function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len])
    : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 255])
    : (() => { const b = Buffer.alloc(10); b[0] = 0x80 | opcode; b[1] = 127; b.writeBigUInt64BE(BigInt(len), 2); return b; })();
  return Buffer.concat([head, payload]);
}

function closePayload(code, reason) {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(code);
  return Buffer.concat([b, Buffer.from(reason)]);
}

class Room {
  epoch = "e1";
  seq = 0;
  history = []; // {seq, from, text}
  members = new Set();
  refuse = 0; // refuse this many upgrades with 503
  upgrades = []; // the query of each accepted upgrade
  duplicateReplay = true; // replay two messages too many, to exercise the client's dedupe

  publish(from, text) {
    const m = { type: "message", room: "smoke", from, text, seq: ++this.seq };
    this.history.push(m);
    for (const s of this.members) s.sendJson(m);
  }
}

class Conn {
  constructor(socket, room) {
    this.socket = socket;
    this.room = room;
    this.buf = Buffer.alloc(0);
    this.closeSent = false;
    socket.on("data", (d) => this.#onData(d));
    socket.on("close", () => room.members.delete(this));
    socket.on("error", () => {});
  }
  sendJson(obj) {
    if (!this.closeSent) this.socket.write(frame(1, Buffer.from(JSON.stringify(obj))));
  }
  onText(text) {
    this.room.publish(this.name, text);
  }
  close(code, reason) {
    if (this.closeSent) return;
    this.closeSent = true;
    this.socket.write(frame(8, closePayload(code, reason)));
  }
  #onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      const opcode = this.buf[0] & 15;
      let len = this.buf[1] & 127;
      let off = 2;
      if (len === 126) { if (this.buf.length < 4) return; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) return; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      if (this.buf.length < off + 4 + len) return;
      const mask = this.buf.subarray(off, off + 4);
      const payload = Buffer.from(this.buf.subarray(off + 4, off + 4 + len));
      for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      this.buf = this.buf.subarray(off + 4 + len);
      if (opcode === 1 && !this.closeSent) this.onText(payload.toString());
      else if (opcode === 9) this.socket.write(frame(10, payload));
      else if (opcode === 8) {
        if (!this.closeSent) { this.closeSent = true; this.socket.write(frame(8, payload)); }
        this.socket.end();
        return;
      }
    }
  }
}


// wsgrace.v2: rooms over one connection, as the SPEC's section describes them (the parts the
// page uses: join with since/epoch or last, leave, publish with id and ack, signal, presence).
class V2Room {
  epoch = "v2e1";
  seq = 0;
  history = [];
  members = new Set(); // V2Conn
  ids = new Map(); // from + id → seq
  constructor(name) {
    this.name = name;
  }
  publish(from, text, id) {
    const m = { type: "message", room: this.name, from, text, seq: ++this.seq, ts: Date.now() };
    this.history.push(m);
    if (id) this.ids.set(from + "\n" + id, m.seq);
    for (const c of this.members) c.sendJson(c.name === from && id ? { ...m, id } : m);
  }
}

class V2Conn extends Conn {
  constructor(socket, server, name) {
    super(socket, { members: new Set() });
    this.server = server;
    this.name = name;
    this.rooms = new Set();
    socket.on("close", () => this.#goAway());
    this.sendJson({ type: "hello", name });
  }
  #goAway() {
    for (const r of this.rooms) {
      const room = this.server.v2room(r);
      room.members.delete(this);
      for (const c of room.members) c.sendJson({ type: "presence_leave", room: r, name: this.name });
    }
    this.server.v2conns.delete(this);
  }
  onText(text) {
    let f;
    try { f = JSON.parse(text); } catch { return this.sendJson({ type: "error", code: "bad_request" }); }
    const ref = f.ref === undefined ? {} : { ref: f.ref };
    const room = typeof f.room === "string" ? this.server.v2room(f.room) : null;
    this.server.v2frames.push({ from: this.name, ...f });
    if (!room) return this.sendJson({ type: "error", code: "bad_request", ...ref });
    const joined = this.rooms.has(room.name);
    if (f.type === "join") {
      if (joined) return this.sendJson({ type: "error", code: "already_joined", room: room.name, ...ref });
      this.rooms.add(room.name);
      let head = { type: "joined", room: room.name, epoch: room.epoch, seq: room.seq, ...ref };
      let replay = [];
      if (f.since !== undefined) {
        const first = room.history[0] ? room.history[0].seq : room.seq + 1;
        const ok = f.epoch === room.epoch && f.since <= room.seq && f.since + 1 >= first;
        replay = ok ? room.history.filter((m) => m.seq > f.since) : [];
        head = ok ? { ...head, resumed: true, missed: replay.length } : { ...head, resumed: false };
      } else if (f.last) {
        replay = room.history.slice(-f.last);
      }
      this.sendJson(head);
      for (const m of replay) this.sendJson(m);
      for (const c of room.members) c.sendJson({ type: "presence_join", room: room.name, name: this.name });
      room.members.add(this);
      return;
    }
    if (!joined) return this.sendJson({ type: "error", code: "not_joined", room: room.name, ...ref });
    if (f.type === "leave") {
      this.rooms.delete(room.name);
      room.members.delete(this);
      return this.sendJson({ type: "left", room: room.name, ...ref });
    }
    if (f.type === "publish") {
      const seen = f.id && room.ids.get(this.name + "\n" + f.id);
      if (seen) return this.sendJson({ type: "ack", room: room.name, id: f.id, seq: seen });
      return room.publish(this.name, String(f.text), f.id);
    }
    if (f.type === "signal") {
      for (const c of room.members) if (c !== this) c.sendJson({ type: "signal", room: room.name, from: this.name, text: f.text });
      return;
    }
    if (f.type === "presence") {
      const counts = new Map();
      for (const c of room.members) counts.set(c.name, (counts.get(c.name) || 0) + 1);
      const members = [...counts].map(([name, connections]) => ({ name, connections }));
      return this.sendJson({ type: "presence", room: room.name, members, ...ref });
    }
    this.sendJson({ type: "error", code: "bad_request", room: room.name, ...ref });
  }
}

function startServer() {
  const room = new Room();
  const files = { "/": ["chat.html", "text/html"], "/wsgrace.js": ["wsgrace.js", "text/javascript"] };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const file = files[url.pathname];
    if (file) {
      res.writeHead(200, { "content-type": file[1] + "; charset=utf-8" });
      res.end(fs.readFileSync(path.join(WEB, file[0])));
    } else {
      res.writeHead(404).end();
    }
  });
  const v2rooms = new Map();
  const v2 = {
    v2conns: new Set(),
    v2frames: [],
    v2room: (name) => v2rooms.get(name) || v2rooms.set(name, new V2Room(name)).get(name),
  };
  server.on("upgrade", (req, socket) => {
    const url = new URL(req.url, "http://x");
    const offered = String(req.headers["sec-websocket-protocol"] || "").split(",").map((p) => p.trim());
    if (offered.includes("wsgrace.v2")) {
      const key = req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
      socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${crypto.createHash("sha1").update(key).digest("base64")}\r\n` +
        "Sec-WebSocket-Protocol: wsgrace.v2\r\n\r\n");
      v2.v2conns.add(new V2Conn(socket, v2, url.searchParams.get("name") || "guest-2"));
      return;
    }
    if (url.pathname !== "/ws" || room.refuse > 0) {
      room.refuse = Math.max(0, room.refuse - 1);
      socket.end("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
      return;
    }
    const accept = crypto.createHash("sha1")
      .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const q = Object.fromEntries(url.searchParams);
    room.upgrades.push(q);
    const conn = new Conn(socket, room);
    conn.name = q.name || "guest-1";
    const welcome = { type: "welcome", room: "smoke", name: conn.name, epoch: room.epoch, seq: room.seq };
    if (q.since !== undefined) {
      const since = Number(q.since);
      const first = room.history[0] ? room.history[0].seq : room.seq + 1;
      const ok = q.epoch === room.epoch && since <= room.seq && since + 1 >= first;
      if (ok) {
        const replay = room.history.filter((m) => m.seq > since);
        conn.sendJson({ ...welcome, resumed: true, missed: replay.length });
        const dup = room.duplicateReplay ? room.history.filter((m) => m.seq > since - 2 && m.seq <= since) : [];
        for (const m of [...dup, ...replay, ...replay.slice(0, 1)]) conn.sendJson(m);
      } else {
        conn.sendJson({ ...welcome, resumed: false });
      }
    } else {
      conn.sendJson(welcome);
    }
    room.members.add(conn);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, room, v2, port: server.address().port })));
}

// --- WebDriver over plain HTTP -----------------------------------------------------------

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
});

async function wd(base, method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${p}: ${JSON.stringify(json.value)}`);
  return json.value;
}

async function waitFor(what, check) {
  const start = Date.now();
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() - start > DEADLINE_MS) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// --- the check ---------------------------------------------------------------------------

const { server, room, v2, port } = await startServer();
const driverPort = await freePort();
const driver = spawn("/usr/bin/chromedriver", [`--port=${driverPort}`], { stdio: "ignore" });
const WD = `http://127.0.0.1:${driverPort}`;
let session;
let bobSession;
const newSession = () => wd(WD, "POST", "/session", {
  capabilities: { alwaysMatch: { "goog:chromeOptions": { binary: "/usr/bin/chromium", args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700",
  ] } } },
});
try {
  const caps = await waitFor("chromedriver", () => newSession().catch(() => null));
  session = `/session/${caps.sessionId}`;
  const js = (script, args = []) => wd(WD, "POST", `${session}/execute/sync`, { script, args });
  const page = () => js(`return {
    state: document.querySelector('#status').dataset.state,
    status: document.querySelector('#status-text').innerText,
    seqs: [...document.querySelectorAll('#messages li[data-seq]')].map(li => Number(li.dataset.seq)),
    texts: [...document.querySelectorAll('#messages li[data-seq]')].map(li => li.textContent),
    lastClose: window.lastClose, closes: window.wsgraceCloses, pwned: window.pwned || null,
    clientState: window.wsgraceClient && window.wsgraceClient.state }`);
  const sendFromPage = (text) => js(`document.querySelector('#text').value = arguments[0];
    document.querySelector('#send-button').click();`, [text]);
  const step = (name) => console.log("ok -", name);

  await wd(WD, "POST", `${session}/url`, { url: `http://127.0.0.1:${port}/?room=smoke&name=tester` });
  await waitFor("open as tester", async () => { const p = await page(); return p.state === "open" && p.status.includes("as tester"); });
  assert.deepEqual(room.upgrades[0], { room: "smoke", name: "tester" });
  step("?room=R&name=N joins at once; #status data-state=open, 'as tester'");

  for (const t of ["one", "two"]) await sendFromPage(t);
  room.publish("bob", "<img src=x onerror=window.pwned=1>");
  await waitFor("3 messages", async () => (await page()).seqs.length === 3);
  let p = await page();
  assert.deepEqual(p.seqs, [1, 2, 3]);
  assert.ok(p.texts[2].includes("<img src=x onerror=window.pwned=1>"), p.texts[2]);
  assert.equal(p.pwned, null);
  step("send + receive; each message is li[data-seq]; message text escaped");

  // Shutdown: going_away, then a clean 1001; a message sent meanwhile must be replayed.
  for (const c of room.members) { c.sendJson({ type: "going_away", reconnect_after_ms: 800 }); c.close(1001, "server shutting down"); }
  room.publish("bob", "while you were away");
  await waitFor("the 1001 close", async () => (await page()).lastClose?.code === 1001);
  p = await page();
  assert.deepEqual(p.lastClose, { code: 1001, reason: "server shutting down", wasClean: true });
  assert.ok(p.status.includes("code 1001") && p.status.includes("wasClean true"), p.status);
  await waitFor("resumed", async () => { const q = await page(); return q.state === "open" && q.status.includes("Back online; 1 missed message caught up"); });
  await waitFor("the replayed message", async () => (await page()).seqs.length === 4);
  p = await page();
  assert.deepEqual(p.seqs, [1, 2, 3, 4], "duplicates in the replay are not shown");
  assert.deepEqual(room.upgrades[1], { room: "smoke", name: "tester", since: "3", epoch: "e1" });
  step("going_away + 1001: close shown (code, reason, wasClean), resumed with since/epoch, replay deduplicated");

  // Refused upgrades (503) while the server is down: failed attempts, shown apart; 1001 stays.
  room.refuse = 2;
  for (const c of room.members) c.socket.destroy();
  await waitFor("reconnecting", async () => (await page()).state === "reconnecting");
  await waitFor("open again", async () => (await page()).state === "open");
  p = await page();
  assert.ok(p.closes.filter((c) => !c.opened).length >= 1, JSON.stringify(p.closes));
  assert.equal(p.lastClose.code, 1006);
  step("a dropped connection (1006) and refused upgrades (503) back off and recover");

  // History lost: the resume is refused → gap.
  room.history = [];
  room.epoch = "e2";
  room.seq = 0;
  for (const c of room.members) c.close(1012, "restart");
  await waitFor("gap", async () => (await page()).status.includes("The server restarted; messages from before may be missing."));
  room.publish("bob", "new epoch");
  await waitFor("the new-epoch message", async () => (await page()).seqs.length === 5);
  p = await page();
  assert.deepEqual(p.seqs, [1, 2, 3, 4, 1]);
  step("resumed:false → 'The server restarted; messages from before may be missing.'; delivery continues");

  await js("document.querySelector('#leave').click()");
  await waitFor("closed", async () => { const q = await page(); return q.state === "closed" && q.lastClose.code === 1000; });
  p = await page();
  assert.ok(p.status.includes("code 1000") && p.status.includes("\u201cbye\u201d"), p.status);
  const upgrades = room.upgrades.length;
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(room.upgrades.length, upgrades, "no reconnect after Disconnect");
  step("Disconnect: closed, close 1000 'bye' shown, no reconnect");


  // --- several rooms over one wsgrace.v2 connection: ann in a and b, bob in b ------------
  const roomA = v2.v2room("a");
  for (const t of ["earlier one", "earlier two", "earlier three"]) roomA.publish("carol", t);
  bobSession = `/session/${(await newSession()).sessionId}`;
  const bobJs = (script, args = []) => wd(WD, "POST", `${bobSession}/execute/sync`, { script, args });
  const roomsOf = (run) => run(`
    const tab = (r) => document.querySelector('.tab[data-room="' + r + '"] .unread');
    const rooms = {};
    for (const p of document.querySelectorAll('.room[data-room]')) {
      const lis = [...p.querySelectorAll('li[data-seq]')];
      rooms[p.dataset.room] = {
        seqs: lis.map((li) => Number(li.dataset.seq)),
        texts: lis.map((li) => li.textContent),
        times: lis.map((li) => { const t = li.querySelector('time.time'); return t ? [t.textContent, t.dateTime, li.dataset.ts] : null; }),
        unread: Number(tab(p.dataset.room).dataset.count),
        typing: p.querySelector('.typing').textContent,
        presence: [...p.querySelectorAll('.presence li')].map((li) => li.dataset.name),
        pending: p.querySelectorAll('li.pending').length,
      };
    }
    return { state: document.querySelector('#status').dataset.state,
             status: document.querySelector('#status-text').innerText,
             active: document.querySelector('#rooms-view').dataset.active, rooms,
             url: location.search, pwned: window.pwned || null };`);
  const ann = () => roomsOf(js);
  const bob = () => roomsOf(bobJs);

  await wd(WD, "POST", `${session}/url`, { url: `http://127.0.0.1:${port}/?rooms=a,b&name=ann` });
  await waitFor("ann open with a's recent messages", async () => {
    const q = await ann();
    return q.state === "open" && q.rooms.a && q.rooms.a.seqs.length === 3 && q.rooms.b;
  });
  let r = await ann();
  assert.equal(r.active, "a");
  assert.deepEqual(r.rooms.a.seqs, [1, 2, 3], "the recent conversation (join with last)");
  assert.equal(r.rooms.a.unread, 0, "the recent conversation is not unread");
  assert.ok(r.rooms.a.times.every((t) => t && /\d/.test(t[0]) && t[1].endsWith("Z")), JSON.stringify(r.rooms.a.times));
  const annJoins = v2.v2frames.filter((f) => f.from === "ann" && f.type === "join");
  assert.deepEqual(annJoins.map((f) => [f.room, f.last]), [["a", 50], ["b", 50]]);
  step("?rooms=a,b: one v2 connection, a tab and a list per room, the last 50 messages, times shown");

  await wd(WD, "POST", `${bobSession}/url`, { url: `http://127.0.0.1:${port}/?rooms=b&name=bob` });
  await waitFor("bob open", async () => (await bob()).state === "open");
  await waitFor("bob in ann's presence list of b", async () => (await ann()).rooms.b.presence.includes("bob"));
  await bobJs(`const t = document.querySelector('#room-text'); t.value = 'h'; t.dispatchEvent(new Event('input'));`);
  await waitFor("bob is typing, in ann's b", async () => (await ann()).rooms.b.typing === "bob is typing…");
  assert.equal((await ann()).rooms.a.typing, "");
  step("bob types in b: ann sees 'bob is typing…' in b only (signal)");

  await bobJs(`document.querySelector('#room-text').value = arguments[0]; document.querySelector('#room-send-button').click();`,
    ["hi ann <img src=x onerror=window.pwned=1>"]);
  await waitFor("bob's message in ann's b", async () => (await ann()).rooms.b.seqs.length === 1);
  r = await ann();
  assert.ok(r.rooms.b.texts[0].includes("hi ann <img src=x onerror=window.pwned=1>"), r.rooms.b.texts[0]);
  assert.ok(r.rooms.b.times[0] && /\d/.test(r.rooms.b.times[0][0]), JSON.stringify(r.rooms.b.times));
  assert.ok(Math.abs(Date.parse(r.rooms.b.times[0][1]) - Date.now()) < 60000);
  assert.equal(r.rooms.b.unread, 1, "b is not in view");
  assert.equal(r.rooms.b.typing, "", "a message ends its sender's typing");
  assert.equal(r.pwned, null);
  await waitFor("bob's own copy confirmed", async () => { const q = await bob(); return q.rooms.b.seqs.length === 1 && q.rooms.b.pending === 0; });
  step("bob sends in b: ann sees it in b's list with its time, b's unread count is 1 while ann views a");

  await js(`document.querySelector('.tab[data-room="b"]').click()`);
  r = await ann();
  assert.equal(r.active, "b");
  assert.equal(r.rooms.b.unread, 0);
  step("opening b clears its unread count");

  // A drop while both rooms are busy; ann writes meanwhile: each room resumes on its own,
  // her message goes out once on the new connection, nothing is shown twice.
  for (const c of v2.v2conns) if (c.name === "ann") c.socket.destroy();
  await waitFor("ann reconnecting", async () => (await ann()).state === "reconnecting");
  roomA.publish("carol", "a while away");
  v2.v2room("b").publish("carol", "b while away");
  await js(`document.querySelector('#room-text').value = 'sent while away'; document.querySelector('#room-send-button').click();`);
  await waitFor("ann back, everything once", async () => {
    const q = await ann();
    return q.state === "open" && q.rooms.a.seqs.length === 4 && q.rooms.b.seqs.length === 3 && q.rooms.b.pending === 0;
  });
  r = await ann();
  assert.deepEqual(r.rooms.a.seqs, [1, 2, 3, 4]);
  assert.deepEqual(r.rooms.b.seqs, [1, 2, 3]);
  assert.ok(r.rooms.b.texts[2].includes("sent while away"));
  const rejoins = v2.v2frames.filter((f) => f.from === "ann" && f.type === "join").slice(2);
  assert.deepEqual(rejoins.map((f) => [f.room, f.since, f.epoch]), [["a", 3, "v2e1"], ["b", 1, "v2e1"]]);
  const publishes = v2.v2frames.filter((f) => f.from === "ann" && f.type === "publish");
  assert.equal(publishes.length, 1, "sent once, after the rejoin");
  assert.equal(r.rooms.a.unread, 1, "a's missed message is unread");
  step("a drop: each room rejoined with its own since/epoch, no gap, no duplicate; a message written meanwhile sent once");

  await js(`document.querySelector('.tab[data-room="a"]').click(); document.querySelector('#room-leave-button').click();`);
  await waitFor("a left", async () => { const q = await ann(); return !q.rooms.a && q.active === "b"; });
  assert.ok((await ann()).url.includes("rooms=b"), (await ann()).url);
  step("leave a: its tab and list go, the URL follows");

  const pngRooms = await wd(WD, "GET", `${bobSession}/screenshot`);
  fs.writeFileSync("/tmp/wsgrace-chat-smoke-rooms-bob.png", Buffer.from(pngRooms, "base64"));

  const png = await wd(WD, "GET", `${session}/screenshot`);
  fs.writeFileSync("/tmp/wsgrace-chat-smoke.png", Buffer.from(png, "base64"));
  console.log("screenshot: /tmp/wsgrace-chat-smoke.png");
  console.log("browser smoke: all ok");
} finally {
  if (session) await wd(WD, "DELETE", session).catch(() => {});
  if (bobSession) await wd(WD, "DELETE", bobSession).catch(() => {});
  driver.kill();
  server.close();
  server.closeAllConnections?.();
}
process.exit(0);
