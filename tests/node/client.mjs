// Drives a running `ringws serve` (echo, started with `--subprotocol chat`) with Node's `ws`
// client and checks every answer. Prints one `ok:` line per scenario; any failure exits
// non-zero.
//
// usage: node client.mjs ws://HOST:PORT [--deflate]
//        node client.mjs wss://HOST:PORT --ca CA.pem [--deflate]
//
// With --deflate the server runs with permessage-deflate on, and the scenarios run over
// window sizes and context-takeover modes. Over wss:// the server's certificate must chain to
// the CA in --ca.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const URL = process.argv[2];
const DEFLATE = process.argv.includes('--deflate');
const BIG = 16 * 1024 * 1024;
const caAt = process.argv.indexOf('--ca');
const TLS = caAt > 0 ? { ca: readFileSync(process.argv[caAt + 1]) } : {};

function ok(name) {
  console.log(`ok: ${name}`);
}

async function connect(path, protocols, options = {}) {
  const ws = new WebSocket(URL + path, protocols, { maxPayload: BIG + 1024, ...TLS, ...options });
  const messages = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const message = isBinary ? Buffer.from(data) : data.toString('utf8');
    const waiter = waiters.shift();
    if (waiter) waiter(message);
    else messages.push(message);
  });
  let closed = null;
  ws.on('close', (code, reason) => {
    closed = `the server closed the connection: ${code} ${reason}`;
    for (const waiter of waiters.splice(0)) waiter(Promise.reject(new Error(closed)));
  });
  await once(ws, 'open');
  ws.next = () => {
    if (messages.length > 0) return Promise.resolve(messages.shift());
    if (closed) return Promise.reject(new Error(closed));
    return new Promise((resolve) => waiters.push(resolve));
  };
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

async function compressed(options) {
  const ws = await connect('/node/deflate', undefined, { perMessageDeflate: { threshold: 0, ...options } });
  assert.match(ws.extensions, /permessage-deflate/, `not negotiated with ${JSON.stringify(options)}`);
  const text = '{"symbol": "ACME", "price": 101.25, "note": "Grüße"} '.repeat(40);
  for (let i = 0; i < 5; i++) {
    ws.send(text + i);
    assert.equal(await ws.next(), text + i);
  }
  const noise = Buffer.alloc(1 << 20);
  for (let i = 0; i < noise.length; i++) noise[i] = (Math.random() * 256) | 0;
  ws.send(noise);
  assert.ok(noise.equals(await ws.next()), 'random megabyte differs');
  ws.send('frag', { fin: false });
  ws.send('mented '.repeat(100), { fin: false });
  ws.send('end', { fin: true });
  assert.equal(await ws.next(), 'frag' + 'mented '.repeat(100) + 'end');
  ws.send('');
  assert.equal(await ws.next(), '');
  await close(ws);
  ok(`permessage-deflate ${JSON.stringify(options)} (${ws.extensions})`);
}

async function deflateMatrix() {
  await compressed({});
  for (const bits of [9, 12, 15]) {
    await compressed({ serverMaxWindowBits: bits });
    await compressed({ clientMaxWindowBits: bits });
  }
  await compressed({ serverNoContextTakeover: true });
  await compressed({ clientNoContextTakeover: true });
  await compressed({ serverNoContextTakeover: true, clientNoContextTakeover: true, serverMaxWindowBits: 10 });
}

const timer = setTimeout(() => {
  console.error('node ws: timed out');
  process.exit(1);
}, 120_000);
const scenarios = DEFLATE
  ? [deflateMatrix, sixteenMib, manyAtOnce]
  : [echoTextAndBinary, fragmented, sixteenMib, pingPong, closeCodes, deflateOfferDeclined, manyAtOnce];
for (const scenario of scenarios) {
  await scenario();
}
clearTimeout(timer);
console.log('node ws: all scenarios passed');
