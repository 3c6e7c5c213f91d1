// Drives a running `ringws serve` (echo, started with `--subprotocol chat`) with Node's `ws`
// client and checks every answer. Prints one `ok:` line per scenario; any failure exits
// non-zero.
//
// usage: node client.mjs ws://HOST:PORT
import assert from 'node:assert/strict';
import { once } from 'node:events';
import WebSocket from 'ws';

const URL = process.argv[2];
const BIG = 16 * 1024 * 1024;

function ok(name) {
  console.log(`ok: ${name}`);
}

async function connect(path, protocols, options = {}) {
  const ws = new WebSocket(URL + path, protocols, { maxPayload: BIG + 1024, ...options });
  const messages = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const message = isBinary ? Buffer.from(data) : data.toString('utf8');
    const waiter = waiters.shift();
    if (waiter) waiter(message);
    else messages.push(message);
  });
  await once(ws, 'open');
  ws.next = () =>
    messages.length > 0 ? Promise.resolve(messages.shift()) : new Promise((r) => waiters.push(r));
  return ws;
}

async function close(ws) {
  const closed = once(ws, 'close');
  ws.close(1000);
  await closed;
}

async function echoTextAndBinary() {
  const ws = await connect('/node', ['chat']);
  assert.equal(ws.protocol, 'chat');
  ws.send('Grüße, 世界 👋');
  assert.equal(await ws.next(), 'Grüße, 世界 👋');
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  ws.send(bytes);
  assert.deepEqual(await ws.next(), bytes);
  await close(ws);
  ok('text and binary messages echo');
}

async function fragmented() {
  const ws = await connect('/node');
  ws.send('frag', { fin: false });
  ws.send('mented ', { fin: false });
  ws.send('Grüße', { fin: true });
  assert.equal(await ws.next(), 'fragmented Grüße');
  await close(ws);
  ok('fragmented messages reassemble');
}

async function sixteenMib() {
  const ws = await connect('/node');
  const payload = Buffer.alloc(BIG);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
  ws.send(payload);
  const echoed = await ws.next();
  assert.equal(echoed.length, BIG);
  assert.ok(payload.equals(echoed), '16 MiB echo differs');
  await close(ws);
  ok('a 16 MiB message echoes');
}

async function pingPong() {
  const ws = await connect('/node');
  const pong = once(ws, 'pong');
  ws.ping(Buffer.from('are you there'));
  const [data] = await pong;
  assert.equal(data.toString(), 'are you there');
  await close(ws);
  ok('pings get pongs with the same payload');
}

async function closeCodes() {
  const ws = await connect('/node');
  const closed = once(ws, 'close');
  ws.close(4000, 'bye now');
  const [code] = await closed;
  assert.equal(code, 4000);
  ok('a close is answered with the same code');
}

async function deflateOfferDeclined() {
  // The server runs without compression: the offer ws makes by default must be left out.
  const ws = await connect('/node', undefined, { perMessageDeflate: true });
  assert.equal(ws.extensions, '');
  ws.send('plain');
  assert.equal(await ws.next(), 'plain');
  await close(ws);
  ok('a permessage-deflate offer is declined cleanly');
}

async function manyAtOnce() {
  await Promise.all(
    Array.from({ length: 64 }, async (_, n) => {
      const ws = await connect(`/node/${n}`);
      for (let i = 0; i < 100; i++) {
        ws.send(`${n}:${i}`);
        assert.equal(await ws.next(), `${n}:${i}`);
      }
      await close(ws);
    }),
  );
  ok('64 clients at once, 100 messages each');
}

const timer = setTimeout(() => {
  console.error('node ws: timed out');
  process.exit(1);
}, 120_000);
for (const scenario of [echoTextAndBinary, fragmented, sixteenMib, pingPong, closeCodes, deflateOfferDeclined, manyAtOnce]) {
  await scenario();
}
clearTimeout(timer);
console.log('node ws: all scenarios passed');
