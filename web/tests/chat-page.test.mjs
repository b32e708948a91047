// The chat page's pure words and decisions (web/chat.html, the block between `// <pure>` and
// `// </pure>` of its script), run on their own: refusals, closes and resumes in plain
// words, the /readyz backoff while degraded, and which unconfirmed send an own copy or an
// `error` answers.

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const page = fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../chat.html"), "utf8");
const block = page.match(/\/\/ <pure>[^\n]*\n([\s\S]*?)\/\/ <\/pure>/);
assert.ok(block, "chat.html has a // <pure> … // </pure> block");
const { refusalWords, closeWords, resumeWords, readyzDelay, confirmedBy, refusedBy } = new Function(
  block[1] + "\nreturn { refusalWords, closeWords, resumeWords, readyzDelay, confirmedBy, refusedBy };",
)();

test("refusals in words a user understands", () => {
  assert.equal(refusalWords(401, "unauthorized: token expired", true),
    "Your sign-in expired or is missing; sign in again and reload the page");
  assert.match(refusalWords(401, "unauthorized: missing token", false), /^Your sign-in expired or is missing; trying again/);
  assert.equal(refusalWords(403, "forbidden: room not granted by the token", true), "You are not allowed in this room");
  assert.equal(refusalWords(400, "name must be 1-64 characters of [A-Za-z0-9_.-]", true),
    "That name can't be used: name must be 1-64 characters of [A-Za-z0-9_.-]");
  assert.equal(refusalWords(400, "room must be 1-64 characters of [A-Za-z0-9_.-]", true),
    "That room name can't be used: room must be 1-64 characters of [A-Za-z0-9_.-]");
  assert.match(refusalWords(400, "bad query: x", true), /^The server could not accept this connection: bad query/);
  assert.equal(refusalWords(429, "too many connections from this address", false),
    "Too many connections from your network; retrying…");
  assert.equal(refusalWords(503, "draining", false), "The server is busy or restarting; retrying…");
  assert.equal(refusalWords(503, "broker unavailable", false), "The server cannot deliver messages right now; retrying…");
  assert.equal(refusalWords(418, "", true), "The server refused the connection (HTTP 418)");
});

test("closes: plain words first, then code, reason and wasClean (the tests read those)", () => {
  const words = closeWords({ code: 1001, reason: "server shutting down", wasClean: true });
  assert.equal(words, "The server is restarting or shutting down (code 1001 \u201cserver shutting down\u201d, wasClean true)");
  assert.equal(closeWords({ code: 1000, reason: "bye", wasClean: true }), "Disconnected (code 1000 \u201cbye\u201d, wasClean true)");
  assert.equal(closeWords({ code: 1006, reason: "", wasClean: false }), "The connection was lost (code 1006, wasClean false)");
  assert.match(closeWords({ code: 4321, reason: "", wasClean: true }), /^Disconnected \(code 4321/);
});

test("resumes without jargon: no 'epoch', no 'gap'", () => {
  const restarted = "The server restarted; messages from before may be missing.";
  assert.equal(resumeWords("epoch", { epoch: "e2", seq: 0 }), restarted);
  assert.equal(resumeWords("gap", { previousEpoch: "e1", previousSeq: 4, epoch: "e2", seq: 0 }), restarted);
  assert.match(resumeWords("gap", { previousEpoch: "e1", previousSeq: 4, epoch: "e1", seq: 90 }),
    /^Some messages from while you were away could not be recovered/);
  assert.equal(resumeWords("resumed", { missed: 0 }), "Back online; nothing was missed");
  assert.equal(resumeWords("resumed", { missed: 1 }), "Back online; 1 missed message caught up");
  assert.equal(resumeWords("resumed", { missed: 3 }), "Back online; 3 missed messages caught up");
  for (const kind of ["epoch", "gap", "resumed"]) {
    assert.doesNotMatch(resumeWords(kind, { missed: 2, previousEpoch: "a", epoch: "b" }), /epoch|gap/i);
  }
});

test("/readyz is polled with backoff while degraded: 1 s, 2 s, 4 s, then every 5 s", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 20].map(readyzDelay), [1000, 2000, 4000, 5000, 5000, 5000]);
});

test("an own copy confirms the oldest unanswered send of that text; an error answers the oldest of the connection", () => {
  const pending = [
    { text: "a", gen: 1, failed: true },
    { text: "b", gen: 1, failed: false },
    { text: "a", gen: 2, failed: false },
    { text: "a", gen: 2, failed: false },
  ];
  assert.equal(confirmedBy(pending, "a"), 2, "a failed entry is no longer waiting for its copy");
  assert.equal(confirmedBy(pending, "b"), 1);
  assert.equal(confirmedBy(pending, "c"), -1);
  assert.equal(refusedBy(pending, 2), 2, "an error answers the present connection's sends only");
  assert.equal(refusedBy(pending, 3), -1);
  assert.equal(refusedBy(pending, 1), 1);
});
