// A remote transport that behaves like the Music Assistant web app's, written from
// docs/protocol.md: signaling over WebSocket, the client is the offerer, `ma-api` is created
// before the offer, candidates are trickled both ways, the answer's certificate is pinned to the
// Remote ID (#pin-check) before it is applied, `__chunk__` frames are reassembled
// (#chunk-framing), and the `http_proxy` channel speaks the binary form of #proxy-responses.
'use strict';

class PinError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PinError';
  }
}

class TimeoutError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TimeoutError';
  }
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

// docs/protocol.md#pin-check: map 9 -> 2, RFC 4648 base32 without padding, exactly 16 bytes (trailing bits zero).
function remoteIdPrefix(remoteId) {
  const text = String(remoteId).trim().toUpperCase().replace(/9/g, '2');
  let acc = 0;
  let bits = 0;
  const out = [];
  for (const ch of text) {
    const v = BASE32.indexOf(ch);
    if (v < 0) throw new PinError(`Remote ID ${remoteId} is not base32 (${JSON.stringify(ch)})`);
    acc = (acc << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
    acc &= (1 << bits) - 1;
  }
  if (bits >= 5 || acc !== 0) throw new PinError(`Remote ID ${remoteId} is not canonical base32`);
  if (out.length !== 16) {
    throw new PinError(`Remote ID ${remoteId} decodes to ${out.length} bytes instead of 16`);
  }
  return out;
}

// docs/protocol.md#pin-check: drop non-sha-256 a=fingerprint lines, require at least one sha-256 line, and every one
// must start with the Remote ID's 16 bytes. Throws PinError; never retried by the caller.
function verifyAnswerFingerprint(sdp, remoteId) {
  const expected = remoteIdPrefix(remoteId);
  let seen = 0;
  for (let line of String(sdp).split('\n')) {
    line = line.replace(/\r$/, '');
    if (line.length < 14 || line.slice(0, 14).toLowerCase() !== 'a=fingerprint:') continue;
    const parts = line.slice(14).trim().split(/\s+/);
    if ((parts[0] || '').toLowerCase() !== 'sha-256') continue;
    seen += 1;
    const value = parts[1] || '';
    const bytes = value.split(':').map((p) => (/^[0-9a-fA-F]{2}$/.test(p) ? parseInt(p, 16) : NaN));
    if (bytes.length < 16 || bytes.some(Number.isNaN)) {
      throw new PinError(`malformed sha-256 fingerprint ${JSON.stringify(value)}`);
    }
    for (let i = 0; i < 16; i++) {
      if (bytes[i] !== expected[i]) {
        throw new PinError(`the gateway's certificate ${value} does not match Remote ID ${remoteId}`);
      }
    }
  }
  if (seen === 0) throw new PinError('the answer has no sha-256 fingerprint');
}

function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// docs/protocol.md#chunk-framing: {"type":"__chunk__","id","seq","count","b64"} frames of one message, any order.
class Reassembler {
  constructor(maxBytes = 64 * 1024 * 1024, maxPending = 16) {
    this.maxBytes = maxBytes;
    this.maxPending = maxPending;
    this.pending = new Map();
    this.frames = 0;
    this.messages = 0;
    this.decoder = new TextDecoder('utf-8', { fatal: true });
  }

  // Returns the message to deliver: the text itself, a reassembled text, or null (a frame of
  // a message that is not complete yet).
  push(text) {
    if (text.length < 20 || text.charCodeAt(0) !== 123 || !text.slice(0, 64).includes('__chunk__')) {
      return text;
    }
    let m;
    try {
      m = JSON.parse(text);
    } catch (_) {
      return text;
    }
    if (!m || m.type !== '__chunk__') return text;
    const { id, seq, count, b64 } = m;
    if (!Number.isInteger(seq) || !Number.isInteger(count) || count < 1 || seq < 0 || seq >= count
        || typeof b64 !== 'string') {
      throw new Error(`malformed __chunk__ frame ${text.slice(0, 120)}`);
    }
    this.frames += 1;
    let e = this.pending.get(id);
    if (!e) {
      if (this.pending.size >= this.maxPending) throw new Error('too many chunked messages at once');
      e = { count, parts: new Array(count), got: 0, bytes: 0 };
      this.pending.set(id, e);
    }
    if (e.count !== count) throw new Error(`__chunk__ ${id}: count changed from ${e.count} to ${count}`);
    if (e.parts[seq] === undefined) {
      const part = base64ToBytes(b64);
      e.parts[seq] = part;
      e.got += 1;
      e.bytes += part.length;
      if (e.bytes > this.maxBytes) throw new Error(`__chunk__ ${id}: above ${this.maxBytes} bytes`);
    }
    if (e.got < e.count) return null;
    this.pending.delete(id);
    const all = new Uint8Array(e.bytes);
    let at = 0;
    for (const p of e.parts) {
      all.set(p, at);
      at += p.length;
    }
    this.messages += 1;
    return this.decoder.decode(all);
  }
}

// Messages of a data channel (or a callback-fed source), awaited one at a time.
class MessageQueue {
  constructor() {
    this.items = [];
    this.waiters = [];
    this.closed = null;
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w.resolve(item);
    else this.items.push(item);
  }

  close(reason) {
    if (this.closed) return;
    this.closed = reason || 'closed';
    for (const w of this.waiters.splice(0)) w.reject(new Error(`channel closed: ${this.closed}`));
  }

  next(timeoutMs, what) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    if (this.closed) return Promise.reject(new Error(`channel closed: ${this.closed}`));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new TimeoutError(`no ${what || 'message'} within ${timeoutMs} ms`));
      }, timeoutMs);
      w.resolve = (v) => { clearTimeout(timer); resolve(v); };
      w.reject = (e) => { clearTimeout(timer); reject(e); };
      this.waiters.push(w);
    });
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`${what} did not happen within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function waitChannelOpen(dc, ms) {
  if (dc.readyState === 'open') return Promise.resolve();
  return withTimeout(new Promise((resolve, reject) => {
    dc.addEventListener('open', () => resolve(), { once: true });
    dc.addEventListener('close', () => reject(new Error(`channel ${dc.label} closed before opening`)), { once: true });
  }), ms, `channel ${dc.label} open`);
}

// One remote connection: signaling socket, peer connection, `ma-api` and side channels.
class RemoteConnection {
  constructor({ signalUrl, remoteId, log = () => {}, timeoutMs = 15000, fakeMedia = false, noTurn = false }) {
    // Leave out the TURN servers session-ready offers (a test of the gateway's own relay).
    this.noTurn = noTurn;
    this.signalUrl = signalUrl;
    this.remoteId = remoteId;
    this.log = log;
    this.timeoutMs = timeoutMs;
    this.fakeMedia = fakeMedia;
    this.t = {};
    this.api = null;
    this.apiQueue = new MessageQueue();
    this.reassembler = new Reassembler();
    this.pc = null;
    this.ws = null;
    this.sessionId = null;
    this.remoteSet = false;
    this.pendingCandidates = [];
    this.localCandidates = [];
    this.remoteCandidates = [];
    this.states = [];
    this.lostReason = null;
    this.pinChecked = false;
    this.remoteDescriptionApplied = false;
    this.chain = Promise.resolve();
    this.onlost = null;
    this._lostWaiters = [];
    this._failConnect = null;
    this._media = null;
  }

  now() {
    return performance.now();
  }

  // Resolves with MA's first message (server_info) once the `ma-api` bridge works.
  async connect() {
    const first = new Promise((resolve, reject) => {
      this._firstResolve = resolve;
      this._failConnect = reject;
    });
    first.catch(() => {});
    try {
      return await withTimeout(this._connect(first), this.timeoutMs, 'connect to server_info');
    } catch (e) {
      this.close();
      throw e;
    }
  }

  async _connect(first) {
    const ws = (this.ws = new WebSocket(this.signalUrl));
    await withTimeout(new Promise((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`signaling socket ${this.signalUrl} failed`));
    }), this.timeoutMs, 'signaling socket open');
    ws.onerror = null;
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        this.log(`signaling sent non-JSON: ${String(ev.data).slice(0, 100)}`);
        return;
      }
      this.chain = this.chain.then(() => this._onSignal(msg)).catch((e) => this._fail(e));
    };
    ws.onclose = (ev) => this._fail(new Error(`signaling socket closed (${ev.code} ${ev.reason})`));
    this.t.connectRequest = this.now();
    this._signal({ type: 'connect-request', remoteId: this.remoteId });
    return first;
  }

  _signal(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  // Before the first message: reject connect(). After: the connection is lost.
  _fail(err) {
    if (this._failConnect) {
      const f = this._failConnect;
      this._failConnect = null;
      f(err);
      return;
    }
    this._lost(err.message || String(err));
  }

  _lost(reason) {
    if (this.lostReason) return;
    this.lostReason = reason;
    this.t.lost = this.now();
    this.log(`connection lost: ${reason}`);
    for (const w of this._lostWaiters.splice(0)) w(reason);
    if (this.onlost) this.onlost(reason);
  }

  // Resolves with the reason once the connection is lost.
  lost(ms) {
    if (this.lostReason) return Promise.resolve(this.lostReason);
    return withTimeout(new Promise((resolve) => this._lostWaiters.push(resolve)), ms, 'connection loss');
  }

  async _onSignal(msg) {
    switch (msg.type) {
      case 'connected':
        await this._onConnected(msg);
        break;
      case 'answer':
        await this._onAnswer(msg);
        break;
      case 'ice-candidate':
        await this._onCandidate(msg.data || {});
        break;
      case 'error':
        throw new Error(`signaling error: ${msg.error || msg.message || '(no text)'}`);
      case 'peer-disconnected':
        this.t.peerDisconnected = this.now();
        throw new Error('peer-disconnected: the gateway left the signaling server');
      case 'ping':
        this._signal({ type: 'pong' });
        break;
      default:
        this.log(`signaling: ignoring ${JSON.stringify(msg).slice(0, 100)}`);
    }
  }

  async _onConnected(msg) {
    if (this.pc) throw new Error('a second `connected` on one signaling socket');
    this.t.connected = this.now();
    this.sessionId = msg.sessionId;
    const isTurn = (s) => [].concat(s.urls || s.url || []).some((u) => /^turns?:/i.test(u));
    this.iceServers = (msg.iceServers || []).filter((s) => !(this.noTurn && isTurn(s)));
    if (this.fakeMedia) {
      // Firefox outside a namespace: a live capture makes it gather every host address.
      this._media = await navigator.mediaDevices.getUserMedia({ audio: true });
    }
    const pc = (this.pc = new RTCPeerConnection({ iceServers: this.iceServers }));
    pc.onicecandidate = (ev) => {
      const c = ev.candidate;
      if (!c || !c.candidate) {
        this.t.gatheringDone = this.now();
        if (this._media) {
          for (const tr of this._media.getTracks()) tr.stop();
          this._media = null;
        }
        return;
      }
      this.localCandidates.push(c.candidate);
      this._signal({
        type: 'ice-candidate',
        sessionId: this.sessionId,
        data: {
          candidate: c.candidate,
          sdpMid: c.sdpMid,
          sdpMLineIndex: c.sdpMLineIndex,
          usernameFragment: c.usernameFragment,
        },
      });
    };
    pc.onicegatheringstatechange = () => {
      this.states.push([Math.round(this.now() - this.t.connectRequest), `gathering ${pc.iceGatheringState}`]);
    };
    pc.oniceconnectionstatechange = () => {
      this.states.push([Math.round(this.now() - this.t.connectRequest), `ice ${pc.iceConnectionState}`]);
    };
    pc.onicecandidateerror = (ev) => {
      this.log(`icecandidateerror ${ev.errorCode} ${ev.errorText} ${ev.url || ''} ${ev.address || ''}`);
    };
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      this.states.push([Math.round(this.now() - this.t.connectRequest), s]);
      if (s === 'connected' && !this.t.peerConnected) this.t.peerConnected = this.now();
      if (s === 'failed' || s === 'closed') this._fail(new Error(`peer connection ${s}`));
      if (s === 'disconnected') this._lost('peer connection disconnected');
    };
    // `ma-api` exists before the offer, so the offer carries the SCTP m-line.
    const api = (this.api = pc.createDataChannel('ma-api'));
    api.binaryType = 'arraybuffer';
    api.onopen = () => {
      this.t.channelOpen = this.now();
    };
    api.onmessage = (ev) => {
      if (typeof ev.data !== 'string') {
        this.apiQueue.push(ev.data);
        return;
      }
      let text;
      try {
        text = this.reassembler.push(ev.data);
      } catch (e) {
        this.log(`reassembly failed: ${e.message}`);
        this._fail(e);
        return;
      }
      if (text === null) return;
      if (this._firstResolve) {
        this.t.firstMessage = this.now();
        const r = this._firstResolve;
        this._firstResolve = null;
        this._failConnect = null;
        r(text);
        return;
      }
      this.apiQueue.push(text);
    };
    api.onclose = () => {
      this.t.apiClosed = this.now();
      this.apiQueue.close('ma-api closed');
      this._fail(new Error('the ma-api channel closed'));
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.t.offer = this.now();
    this._signal({
      type: 'offer',
      sessionId: this.sessionId,
      data: { type: 'offer', sdp: pc.localDescription.sdp },
    });
  }

  async _onAnswer(msg) {
    const sdp = msg.data && msg.data.sdp;
    this.t.answer = this.now();
    this.answerSdp = sdp;
    // The pin check comes before anything of the answer is used; a mismatch is final.
    verifyAnswerFingerprint(sdp, this.remoteId);
    this.pinChecked = true;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    this.remoteDescriptionApplied = true;
    this.remoteSet = true;
    for (const c of this.pendingCandidates.splice(0)) await this._addCandidate(c);
  }

  async _onCandidate(data) {
    let cand = data.candidate;
    if (typeof cand !== 'string' || cand === '') return;
    if (!cand.startsWith('candidate:')) cand = `candidate:${cand}`;
    const init = { candidate: cand };
    if (data.sdpMid !== undefined && data.sdpMid !== null) init.sdpMid = data.sdpMid;
    if (Number.isInteger(data.sdpMLineIndex)) init.sdpMLineIndex = data.sdpMLineIndex;
    if (init.sdpMid === undefined && init.sdpMLineIndex === undefined) init.sdpMLineIndex = 0;
    this.remoteCandidates.push(cand);
    if (!this.remoteSet) this.pendingCandidates.push(init);
    else await this._addCandidate(init);
  }

  async _addCandidate(init) {
    try {
      await this.pc.addIceCandidate(init);
    } catch (e) {
      this.log(`gateway candidate ${init.candidate} refused: ${e.message}`);
    }
  }

  send(text) {
    this.api.send(text);
  }

  next(ms, what) {
    return this.apiQueue.next(ms || this.timeoutMs, what);
  }

  // Open a side channel in band (no renegotiation), wait until it is open.
  async openChannel(label) {
    const dc = this.pc.createDataChannel(label);
    dc.binaryType = 'arraybuffer';
    await waitChannelOpen(dc, this.timeoutMs);
    return dc;
  }

  // The selected candidate pair and the SCTP limits, for the report.
  async describe() {
    const out = {
      maxMessageSize: this.pc && this.pc.sctp ? this.pc.sctp.maxMessageSize : null,
      localCandidates: this.localCandidates,
      remoteCandidates: this.remoteCandidates,
      states: this.states,
    };
    try {
      const stats = await this.pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      stats.forEach((s) => {
        if (s.type === 'candidate-pair' && (s.selected || s.nominated) && s.state === 'succeeded') {
          const l = byId.get(s.localCandidateId) || {};
          const r = byId.get(s.remoteCandidateId) || {};
          out.pair = {
            local: `${l.candidateType} ${l.address || l.ip}:${l.port}`,
            remote: `${r.candidateType} ${r.address || r.ip}:${r.port}`,
          };
        }
      });
    } catch (e) {
      out.statsError = e.message;
    }
    return out;
  }

  close() {
    this._failConnect = null;
    this.lostReason = this.lostReason || 'closed by us';
    try {
      if (this.pc) this.pc.close();
    } catch (_) { /* already closed */ }
    try {
      if (this.ws) {
        this.ws.onclose = null;
        this.ws.close();
      }
    } catch (_) { /* already closed */ }
    if (this._media) {
      for (const tr of this._media.getTracks()) tr.stop();
      this._media = null;
    }
  }
}

// The `http_proxy` channel (docs/protocol.md#proxy-responses): one request at a time; the answer is a text header
// {"type":"http-proxy-response","id","status","headers","size":N} then N bytes of binary frames.
class HttpProxyChannel {
  constructor(dc, timeoutMs) {
    this.dc = dc;
    this.timeoutMs = timeoutMs;
    this.queue = new MessageQueue();
    dc.onmessage = (ev) => this.queue.push(ev.data);
    dc.onclose = () => this.queue.close('http_proxy closed');
    this.next = 0;
    this.chain = Promise.resolve();
  }

  request(path, headers = {}, method = 'GET') {
    const run = () => this._request(path, headers, method);
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => {});
    return p;
  }

  async _request(path, headers, method) {
    this.next += 1;
    const id = `req_${this.next}_${Math.random().toString(36).slice(2, 10)}`;
    this.dc.send(JSON.stringify({ type: 'http-proxy-request', id, method, path, headers }));
    const head = await this.queue.next(this.timeoutMs, `http-proxy-response header for ${path}`);
    if (typeof head !== 'string') throw new Error(`binary frame before the response header for ${path}`);
    const m = JSON.parse(head);
    if (m.type !== 'http-proxy-response') throw new Error(`unexpected message on http_proxy: ${head.slice(0, 200)}`);
    if (m.id !== id) throw new Error(`response for ${m.id} while waiting for ${id}`);
    if (!Number.isInteger(m.size)) {
      throw new Error(`response header without an integer size (hex body? ${'body' in m}): ${head.slice(0, 200)}`);
    }
    const frames = [];
    let got = 0;
    while (got < m.size) {
      const f = await this.queue.next(this.timeoutMs, `body bytes ${got}..${m.size} of ${path}`);
      if (typeof f === 'string') throw new Error(`text message inside a body: ${f.slice(0, 200)}`);
      const bytes = new Uint8Array(f);
      frames.push(bytes);
      got += bytes.length;
    }
    if (got !== m.size) throw new Error(`body of ${got} bytes, header said ${m.size}`);
    const body = new Uint8Array(got);
    let at = 0;
    for (const f of frames) {
      body.set(f, at);
      at += f.length;
    }
    return {
      id, status: m.status, headers: m.headers, size: m.size, body,
      frames: frames.map((f) => f.length), headerKeys: Object.keys(m),
    };
  }
}
