// A plain Node.js `ws` server for `loadgen --compare drain` (BENCHMARKS.md): the reference a
// drain is measured against. It accepts WebSockets on `/ws` and, on SIGTERM, closes every
// client with 1001 in one loop (awaited: `ws` waits for each peer's close frame) and exits
// once all are closed. It speaks to loadgen the way
// the wsgrace binary does: `--bind ADDR` (the `--config` file is ignored), one
// `listening on ADDR` line on stdout, a `drain finished:` line on stderr.
//
// The `ws` package is not vendored: install it outside the tree, with no lock file, and point
// WS_MODULE at it, e.g.
//   npm install --prefix /tmp/node-ws --no-save --no-package-lock ws
//   WS_MODULE=/tmp/node-ws/node_modules/ws loadgen --server bench/node/drain_server.sh ...
'use strict';

const { WebSocketServer } = require(process.env.WS_MODULE || 'ws');

const bindAt = process.argv.indexOf('--bind');
const bind = bindAt > 0 ? process.argv[bindAt + 1] : '127.0.0.1:0';
const colon = bind.lastIndexOf(':');
const host = bind.slice(0, colon);
const port = Number(bind.slice(colon + 1));

const wss = new WebSocketServer({ host, port, path: '/ws', backlog: 4096 });
wss.on('listening', () => {
  const address = wss.address();
  process.stdout.write(`listening on ${address.address}:${address.port}\n`);
});
// The same frames a wsgrace session gets: a welcome on connect, and on SIGTERM a going_away
// text with a random reconnect delay (0..5000 ms, wsgrace's default spread) before the close.
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.send('{"type":"welcome","room":"drain","epoch":"node","seq":0}');
});

process.on('SIGTERM', () => {
  const started = Date.now();
  const clients = [...wss.clients];
  let open = clients.length;
  const finish = () => {
    process.stderr.write(
      `drain finished: sessions=${clients.length} duration_ms=${Date.now() - started}\n`,
    );
    process.exit(0);
  };
  if (open === 0) finish();
  for (const ws of clients) {
    ws.once('close', () => {
      open -= 1;
      if (open === 0) finish();
    });
    const delay = Math.floor(Math.random() * 5001);
    ws.send(`{"type":"going_away","reconnect_after_ms":${delay}}`);
    ws.close(1001, 'server shutting down');
  }
});
