// The test driver inside the browser: reads /config.json from the test's HTTP server, runs
// the phases against the real gateway through remote.js, and POSTs one JSON report per phase
// to /report (the test asserts them). Log lines go to /log.
'use strict';

const started = performance.now();

function post(path, body) {
  return fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  }).catch(() => {});
}

function log(line) {
  const text = `[${(performance.now() - started).toFixed(0)} ms] ${line}`;
  console.log(text);
  post('/log', { line: text });
}

function report(phase, result) {
  return post('/report', Object.assign({ phase }, result));
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function sha256(data) {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  return hex(await crypto.subtle.digest('SHA-256', bytes));
}

function utf8Length(s) {
  return new TextEncoder().encode(s).length;
}

// Byte j of sendspin frame k (the test computes the same).
function pattern(size, k) {
  const out = new Uint8Array(size);
  for (let j = 0; j < size; j++) out[j] = (j * 7 + k * 13) % 251;
  return out;
}

function ms(a, b) {
  return a !== undefined && b !== undefined ? +(b - a).toFixed(2) : null;
}

function errorInfo(e) {
  return { name: e && e.name, message: e && (e.message || String(e)) };
}

// ---- phases ---------------------------------------------------------------------------------

function selftest(cfg) {
  const cases = cfg.pin_cases.map((c) => {
    try {
      verifyAnswerFingerprint(c.sdp, c.remote_id);
      return { name: c.name, outcome: 'ok' };
    } catch (e) {
      return { name: c.name, outcome: e.name, message: e.message };
    }
  });
  return { ok: true, cases };
}

async function timed(steps, name, fn) {
  const t0 = performance.now();
  try {
    const value = await fn();
    steps.push({ name, ok: true, ms: +(performance.now() - t0).toFixed(1) });
    return value;
  } catch (e) {
    steps.push(Object.assign({ name, ok: false, ms: +(performance.now() - t0).toFixed(1) }, errorInfo(e)));
    log(`step ${name} failed: ${e.name}: ${e.message}`);
    return undefined;
  }
}

async function mainPhase(cfg) {
  const steps = [];
  const r = { steps };
  const conn = new RemoteConnection({
    signalUrl: cfg.signal_url, remoteId: cfg.remote_id, log, timeoutMs: cfg.timeout_ms, fakeMedia: cfg.fake_media,
  });
  const first = await timed(steps, 'connect', () => conn.connect());
  const t = conn.t;
  r.timings = {
    connect_request_to_connected: ms(t.connectRequest, t.connected),
    connect_request_to_offer: ms(t.connectRequest, t.offer),
    connect_request_to_answer: ms(t.connectRequest, t.answer),
    connect_request_to_peer_connected: ms(t.connectRequest, t.peerConnected),
    connect_request_to_channel_open: ms(t.connectRequest, t.channelOpen),
    connect_request_to_server_info: ms(t.connectRequest, t.firstMessage),
  };
  r.session_id = conn.sessionId;
  r.ice_servers = conn.iceServers;
  r.pin_checked = conn.pinChecked;
  if (first === undefined) {
    r.describe = conn.pc ? await conn.describe() : null;
    conn.close();
    return r;
  }
  r.server_info = first;
  r.describe = await conn.describe();

  // Echo round trips on ma-api through the gateway to the stand-in and back (first, before
  // the large messages leave garbage for the collector).
  r.rtt_ms = await timed(steps, 'rtt', async () => {
    const samples = [];
    for (let i = 0; i < cfg.rtt_count; i++) {
      const text = JSON.stringify({ message_id: `rtt-${i}`, command: 'players/all' });
      const t0 = performance.now();
      conn.send(text);
      const got = await conn.next(cfg.timeout_ms, 'rtt echo');
      samples.push(performance.now() - t0);
      if (got !== text) throw new Error(`rtt echo ${i} differs: ${got.slice(0, 100)}`);
    }
    return samples.map((x) => +x.toFixed(3));
  });

  // Echo of the test's texts, byte for byte (sha-256 of the UTF-8 bytes).
  r.echo = await timed(steps, 'echo', async () => {
    const out = [];
    for (const text of cfg.echo_texts) {
      conn.send(text);
      const got = await conn.next(cfg.timeout_ms, `echo of ${utf8Length(text)} bytes`);
      out.push({ len: utf8Length(got), sha256: await sha256(got), same: got === text });
    }
    return out;
  });

  // MA -> browser: whole below the limit, __chunk__ above.
  r.down = await timed(steps, 'down', async () => {
    const out = [];
    for (const d of cfg.down) {
      const frames0 = conn.reassembler.frames;
      conn.send(JSON.stringify({ command: 'standin/send', size: d.size, message_id: d.id }));
      const got = await conn.next(cfg.timeout_ms, `standin/send of ${d.size} bytes`);
      out.push({
        size: d.size, len: utf8Length(got), sha256: await sha256(got), chunk_frames: conn.reassembler.frames - frames0,
      });
    }
    return out;
  });

  // http_proxy: opened after server_info, as the web app does.
  let proxyChannel = null;
  r.http = await timed(steps, 'http_proxy', async () => {
    const dc = await conn.openChannel('http_proxy');
    const proxy = new HttpProxyChannel(dc, cfg.http_timeout_ms);
    proxyChannel = proxy;
    const out = [];
    for (const req of cfg.http) {
      if (out.some((o) => o.error && o.error.name === 'TimeoutError')) {
        // Frames carry no id: after a lost response the channel is out of step.
        out.push({ path: req.path, error: { name: 'Skipped', message: 'not sent: an earlier request timed out' } });
        continue;
      }
      try {
        const res = await proxy.request(req.path, req.headers || {}, req.method || 'GET');
        const item = {
          path: req.path, status: res.status, headers: res.headers, size: res.size,
          sha256: await sha256(res.body), frames: res.frames, header_keys: res.headerKeys,
        };
        if (req.decode) {
          try {
            const type = (res.headers && (res.headers['Content-Type'] || res.headers['content-type'])) || 'image/png';
            const bmp = await createImageBitmap(new Blob([res.body], { type }));
            item.image = { width: bmp.width, height: bmp.height };
          } catch (e) {
            item.image = { error: e.message };
          }
        }
        if (res.status >= 400 && res.size < 2000) item.text = new TextDecoder().decode(res.body);
        out.push(item);
      } catch (e) {
        out.push(Object.assign({ path: req.path }, { error: errorInfo(e) }));
      }
    }
    return out;
  });

  // The older form on ma-api: one compact JSON text with a hex body, __chunk__ framed.
  r.http_api = await timed(steps, 'http_api', async () => {
    const frames0 = conn.reassembler.frames;
    conn.send(JSON.stringify({
      type: 'http-proxy-request', id: 'api_1', method: 'GET', path: cfg.http[0].path, headers: {},
    }));
    const text = await conn.next(cfg.timeout_ms, 'http-proxy-response on ma-api');
    const m = JSON.parse(text);
    const hexBody = typeof m.body === 'string' ? m.body : '';
    const body = new Uint8Array(hexBody.length / 2);
    for (let i = 0; i < body.length; i++) body[i] = parseInt(hexBody.substr(2 * i, 2), 16);
    return {
      keys: Object.keys(m), id: m.id, status: m.status, headers: m.headers,
      prefix: text.slice(0, text.indexOf('"headers"') + 11),
      lower_hex: hexBody === hexBody.toLowerCase(), size: body.length, sha256: await sha256(body),
      chunk_frames: conn.reassembler.frames - frames0,
    };
  });

  // sendspin: bridged to MA_SENDSPIN_URL (an echo server with benchmark commands).
  const bench = {};
  r.bench = bench;
  r.sendspin = await timed(steps, 'sendspin', async () => {
    // Sendspin is for logged-in users: log in on ma-api first, as the web app does.
    conn.send(JSON.stringify({ command: 'auth', args: { token: 'good-admin', device_name: 'browser' }, message_id: 'login' }));
    const login = JSON.parse(await conn.next(cfg.timeout_ms, 'MA login reply'));
    if (!login.result || login.result.authenticated !== true) throw new Error(`login refused: ${JSON.stringify(login)}`);
    const dc = await conn.openChannel('sendspin');
    const q = new MessageQueue();
    dc.onmessage = (ev) => q.push(ev.data);
    dc.onclose = () => q.close('sendspin closed');
    const out = { binary: [] };
    dc.send(cfg.sendspin_auth);
    out.auth_echo = await q.next(cfg.timeout_ms, 'sendspin auth echo');
    for (let k = 0; k < cfg.sendspin_sizes.length; k++) {
      dc.send(pattern(cfg.sendspin_sizes[k], k));
      const got = await q.next(cfg.timeout_ms, 'sendspin binary echo');
      if (typeof got === 'string') throw new Error(`text instead of binary: ${got.slice(0, 100)}`);
      out.binary.push({ len: got.byteLength, sha256: await sha256(got) });
    }

    // Upload: N bytes to a sink at the stand-in, paced by bufferedAmount.
    const n = cfg.bench_bytes;
    const frame = new Uint8Array(cfg.bench_frame).fill(0x5a);
    dc.bufferedAmountLowThreshold = 512 * 1024;
    dc.send(JSON.stringify({ command: 'bench/sink', bytes: n }));
    let t0 = performance.now();
    for (let sent = 0; sent < n;) {
      if (dc.bufferedAmount > 2 * 1024 * 1024) {
        await withTimeout(new Promise((res) => { dc.onbufferedamountlow = () => res(); }), cfg.timeout_ms, 'bufferedamountlow');
        continue;
      }
      const len = Math.min(frame.length, n - sent);
      dc.send(len === frame.length ? frame : frame.subarray(0, len));
      sent += len;
    }
    const ack = await q.next(cfg.timeout_ms * 2, 'bench/sink acknowledgement');
    bench.upload_ms = performance.now() - t0;
    bench.upload_ack = ack;

    // Download: N bytes from the stand-in.
    t0 = performance.now();
    dc.send(JSON.stringify({ command: 'bench/source', bytes: n, frame: cfg.bench_frame }));
    let got = 0;
    while (got < n) {
      const f = await q.next(cfg.timeout_ms, `bench download at ${got} of ${n} bytes`);
      if (typeof f === 'string') throw new Error(`text during download: ${f.slice(0, 100)}`);
      got += f.byteLength;
    }
    bench.download_ms = performance.now() - t0;
    bench.download_bytes = got;
    bench.bytes = n;
    return out;
  });

  // Large replies, one at a time: 1 and 3 MB on ma-api (chunked), a 3 MB image on
  // http_proxy. Timed here, judged by nobody: the test prints the spread.
  r.big = await timed(steps, 'big', async () => {
    const out = { api_1mb: [], api_3mb: [], image_3mb: [] };
    for (const [key, size] of [['api_1mb', 1000000], ['api_3mb', 3000000]]) {
      for (let i = 0; i < cfg.big_repeats; i++) {
        const t0 = performance.now();
        conn.send(JSON.stringify({ command: 'standin/send', size, message_id: `big-${key}-${i}` }));
        const got = await conn.next(cfg.timeout_ms, `standin/send of ${size} bytes`);
        if (utf8Length(got) !== size) throw new Error(`${key}: ${utf8Length(got)} bytes, not ${size}`);
        out[key].push(+(performance.now() - t0).toFixed(1));
      }
    }
    if (!proxyChannel) throw new Error('no http_proxy channel');
    for (let i = 0; i < cfg.big_repeats; i++) {
      const t0 = performance.now();
      const res = await proxyChannel.request('/imageproxy?bytes=3000000');
      if (res.status !== 200 || res.size !== 3000000) throw new Error(`image: status ${res.status}, ${res.size} bytes`);
      out.image_3mb.push(+(performance.now() - t0).toFixed(1));
    }
    return out;
  });

  // MA closes its socket: the page must see its channel close.
  r.ma_close = await timed(steps, 'ma_close', async () => {
    const t0 = performance.now();
    conn.send(JSON.stringify({ command: 'standin/close' }));
    const reason = await conn.lost(cfg.timeout_ms);
    return {
      reason, ms: +(performance.now() - t0).toFixed(1), api_closed: conn.t.apiClosed !== undefined,
      api_state: conn.api.readyState, pc_state: conn.pc.connectionState,
    };
  });
  conn.close();
  return r;
}

// A gateway registered under a Remote ID that is not its certificate's: the pin check refuses.
async function pinPhase(cfg) {
  const conn = new RemoteConnection({
    signalUrl: cfg.signal_url, remoteId: cfg.fake_remote_id, log, timeoutMs: cfg.timeout_ms, fakeMedia: cfg.fake_media,
  });
  try {
    await conn.connect();
    conn.close();
    return { refused: false };
  } catch (e) {
    return {
      refused: true, error: errorInfo(e), got_answer: conn.answerSdp !== undefined,
      remote_description_applied: conn.remoteDescriptionApplied, pc_state: conn.pc ? conn.pc.connectionState : null,
      api_opened: conn.t.channelOpen !== undefined,
    };
  }
}

// The gateway restarts under the page: it notices and reconnects with the same Remote ID.
async function restartPhase(cfg) {
  const r = {};
  const opts = {
    signalUrl: cfg.signal_url, remoteId: cfg.remote_id, log, timeoutMs: cfg.timeout_ms, fakeMedia: cfg.fake_media,
  };
  let conn = new RemoteConnection(opts);
  r.first_server_info = await conn.connect();
  r.first_session = conn.sessionId;
  const t0 = performance.now();
  await report('restart-ready', {});
  r.lost_reason = await conn.lost(cfg.restart_wait_ms);
  r.lost_after_ms = +(performance.now() - t0).toFixed(1);
  conn.close();
  // Reconnect with a short backoff until the new gateway answers.
  const tLost = performance.now();
  const deadline = tLost + cfg.restart_wait_ms;
  r.attempts = [];
  for (;;) {
    conn = new RemoteConnection(opts);
    try {
      r.server_info = await conn.connect();
      break;
    } catch (e) {
      r.attempts.push(errorInfo(e).message);
      if (e.name === 'PinError' || performance.now() > deadline) throw e;
      await sleep(250);
    }
  }
  r.reconnect_ms = +(performance.now() - tLost).toFixed(1);
  r.session = conn.sessionId;
  const text = JSON.stringify({ message_id: 'after-restart', command: 'info' });
  conn.send(text);
  r.echo_same = (await conn.next(cfg.timeout_ms, 'echo after restart')) === text;
  conn.close();
  return r;
}

// Connect once and report MA's first message, the time to it and the selected candidate
// pair (the NAT lab's browser case).
async function connectPhase(cfg) {
  const conn = new RemoteConnection({
    signalUrl: cfg.signal_url, remoteId: cfg.remote_id, log, timeoutMs: cfg.timeout_ms, fakeMedia: cfg.fake_media,
    noTurn: cfg.no_turn,
  });
  const t0 = performance.now();
  try {
    const first = await conn.connect();
    const r = { server_info: first, server_info_ms: +(performance.now() - t0).toFixed(1) };
    r.ice_servers = conn.iceServers;
    r.describe = await conn.describe();
    return r;
  } finally {
    conn.close();
  }
}

async function run() {
  let cfg;
  try {
    cfg = await (await fetch('/config.json')).json();
  } catch (e) {
    await report('fatal', { error: errorInfo(e) });
    return;
  }
  log(`${navigator.userAgent}; phases ${cfg.phases.join(', ')}`);
  const phases = { selftest, main: mainPhase, pin: pinPhase, restart: restartPhase, connect: connectPhase };
  for (const name of cfg.phases) {
    log(`phase ${name}`);
    try {
      await report(name, Object.assign({ ok: true }, await phases[name](cfg)));
    } catch (e) {
      log(`phase ${name} failed: ${e.name}: ${e.message}`);
      await report(name, { ok: false, error: errorInfo(e) });
    }
  }
  await report('done', {
    user_agent: navigator.userAgent, isolated: self.crossOriginIsolated, total_ms: performance.now() - started,
  });
}

run();
