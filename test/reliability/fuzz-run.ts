/**
 * Runs generated hostile sessions (fuzz-gen.ts) against a live server and checks every answer
 * against the frame's label: each refused frame answered with an error (or the connection
 * closed where the spec allows it), each valid one answered with success, every request
 * answered exactly once, and data read from a session's own region equal to a model of what
 * it wrote. Bounded: every wait has a timeout, and a session that hangs is a violation.
 */
import { connect, type Socket } from 'node:net';
import { NBD_REP_ACK, NBD_REP_FLAG_ERROR } from '../../src/nbd/protocol.js';
import {
  type Expect,
  type FuzzFrame,
  FuzzGenerator,
  type FuzzSession,
  type GeneratorOptions,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NORMAL_CLIENT_FLAGS,
} from './fuzz-gen.js';
import {
  encodeOption,
  infoData,
  metaContextData,
  ReplyParser,
  type ServerMessage,
} from './nbd-wire.js';

/** Time the server gets to answer a batch (or close when it must) before it counts as hung. */
const ANSWER_TIMEOUT_MS = 30_000;
/** Time a frame that must close the connection gets to do so. */
const CLOSE_TIMEOUT_MS = 10_000;
/** Violations kept verbatim; beyond this only the count grows (a broken server floods). */
const VIOLATIONS_KEPT_MAX = 50;

export interface FuzzTotals {
  sessions: number;
  frames: number;
  bytesSent: number;
  /** Answers received and checked against their label. */
  answersChecked: number;
  /** Bytes of valid READs compared with the model, and those that differed. */
  bytesVerified: number;
  wrongBytes: number;
  /** Frames per expected refusal reason (the server's counter must be at least this). */
  refusedByReason: Map<string, number>;
  sessionsByKind: Map<string, number>;
  violations: string[];
  violationCount: number;
  slowestSessionMs: number;
  slowestSession: string;
}

export function emptyTotals(): FuzzTotals {
  return {
    sessions: 0,
    frames: 0,
    bytesSent: 0,
    answersChecked: 0,
    bytesVerified: 0,
    wrongBytes: 0,
    refusedByReason: new Map(),
    sessionsByKind: new Map(),
    violations: [],
    violationCount: 0,
    slowestSessionMs: 0,
    slowestSession: '',
  };
}

function violation(totals: FuzzTotals, where: string, message: string) {
  totals.violationCount++;
  if (totals.violations.length < VIOLATIONS_KEPT_MAX)
    totals.violations.push(`${where}: ${message}`);
}

function bump(map: Map<string, number>, key: string, by = 1) {
  map.set(key, (map.get(key) ?? 0) + by);
}

/** What the runner knows of one session region's content: bytes and which are known. */
export class RegionModel {
  readonly data: Buffer;
  readonly known: Uint8Array;

  constructor(sizeBytes: number) {
    // A fresh export reads as zeroes everywhere.
    this.data = Buffer.alloc(sizeBytes);
    this.known = new Uint8Array(sizeBytes).fill(1);
  }
}

/** A socket with the reply parser in front and waits on what arrives. */
class Wire {
  readonly socket: Socket;
  readonly parser = new ReplyParser();
  readonly inbox: ServerMessage[] = [];
  closed = false;
  #wake: (() => void) | null = null;

  constructor(port: number) {
    this.socket = connect({ port, host: '127.0.0.1' });
    this.socket.setNoDelay(true);
    this.socket.on('data', (chunk: Buffer) => {
      this.inbox.push(...this.parser.push(chunk));
      this.#notify();
    });
    this.socket.on('error', () => {});
    this.socket.on('close', () => {
      this.closed = true;
      this.#notify();
    });
  }

  #notify() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Resolves with the next message, or null on close or timeout. */
  async next(timeoutMs: number): Promise<ServerMessage | null> {
    const deadlineMs = Date.now() + timeoutMs;
    for (;;) {
      const message = this.inbox.shift();
      if (message) return message;
      if (this.closed || Date.now() >= deadlineMs) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadlineMs - Date.now()));
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Resolves true once the server closed the connection, false after the timeout. */
  async waitClosed(timeoutMs: number): Promise<boolean> {
    const deadlineMs = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadlineMs) {
      this.inbox.length = 0;
      await this.next(deadlineMs - Date.now());
    }
    return this.closed;
  }

  /** Writes and waits for the socket to take the bytes (not for the server to read them). */
  async send(bytes: Buffer): Promise<void> {
    if (this.closed || this.socket.destroyed) return;
    if (this.socket.write(bytes)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  destroy() {
    this.socket.destroy();
  }
}

export interface RunContext {
  port: number;
  exportName: string;
  totals: FuzzTotals;
  model: RegionModel;
  regionOffset: number;
  /** Label for violation messages (worker and session index, for replay). */
  where: string;
}

/** Runs one session to its end; never throws on server misbehaviour (records violations). */
export async function runSession(session: FuzzSession, ctx: RunContext): Promise<void> {
  const wire = new Wire(ctx.port);
  ctx.totals.sessions++;
  bump(ctx.totals.sessionsByKind, session.kind);
  try {
    const greeting = await wire.next(ANSWER_TIMEOUT_MS);
    if (greeting?.kind !== 'greeting') {
      violation(ctx.totals, ctx.where, `no greeting (${describe(greeting)})`);
      return;
    }
    if (session.kind === 'options') {
      await runOptions(wire, session.batches[0] ?? [], ctx);
      return;
    }
    if (!(await negotiate(wire, session, ctx))) return;
    if (session.kind === 'slow') {
      await runSlow(wire, session, ctx);
      return;
    }
    for (const batch of session.batches) {
      if (!(await runBatch(wire, batch, ctx))) return;
    }
  } finally {
    wire.destroy();
  }
}

function describe(message: ServerMessage | null): string {
  if (message === null) return 'closed or timed out';
  if (message.kind === 'violation') return `protocol violation: ${message.message}`;
  return message.kind;
}

function count(ctx: RunContext, frame: FuzzFrame) {
  ctx.totals.frames++;
  ctx.totals.bytesSent += frame.bytes.length;
}

// ---------------------------------------------------------------------------------------------
// Handshake

async function runOptions(wire: Wire, frames: FuzzFrame[], ctx: RunContext): Promise<void> {
  for (const frame of frames) {
    await wire.send(frame.bytes);
    count(ctx, frame);
    if (frame.reason !== undefined && frame.expect !== 'ok')
      bump(ctx.totals.refusedByReason, frame.reason);
    if (frame.expect === 'none') {
      if (frame.option === undefined) continue; // the client flags
      return;
    }
    if (frame.expect === 'close') {
      if (!(await wire.waitClosed(CLOSE_TIMEOUT_MS))) {
        violation(
          ctx.totals,
          ctx.where,
          `option frame (${frame.reason}) did not close the connection`,
        );
      }
      return;
    }
    if (!(await checkOptionAnswer(wire, frame, ctx))) return;
  }
}

/** Waits for the final reply to one option and checks it against the label. */
async function checkOptionAnswer(wire: Wire, frame: FuzzFrame, ctx: RunContext): Promise<boolean> {
  for (;;) {
    const message = await wire.next(ANSWER_TIMEOUT_MS);
    if (message === null) {
      if (wire.closed && frame.expect === 'errorOrClose') return false;
      violation(
        ctx.totals,
        ctx.where,
        `option ${frame.option} (${frame.expect}): ${describe(message)}`,
      );
      return false;
    }
    if (message.kind !== 'optionReply') {
      violation(ctx.totals, ctx.where, `option ${frame.option}: got ${describe(message)}`);
      return false;
    }
    if (message.option !== frame.option) {
      violation(
        ctx.totals,
        ctx.where,
        `reply names option ${message.option}, sent ${frame.option}`,
      );
      return false;
    }
    if (!message.final) continue;
    ctx.totals.answersChecked++;
    const isError = (message.type & NBD_REP_FLAG_ERROR) !== 0;
    if (!answerMatches(frame.expect, isError)) {
      const got = isError ? `error 0x${message.type.toString(16)}` : 'success';
      violation(
        ctx.totals,
        ctx.where,
        `option ${frame.option} expected ${frame.expect}, got ${got}`,
      );
    }
    if (frame.option === NBD_OPT_GO && message.type === NBD_REP_ACK)
      wire.parser.startTransmission();
    return true;
  }
}

function answerMatches(expect: Expect, isError: boolean): boolean {
  switch (expect) {
    case 'ok':
      return !isError;
    case 'error':
    case 'errorOrClose':
    case 'close':
      return isError;
    default:
      return true;
  }
}

/** Client flags, then STRUCTURED_REPLY / SET_META_CONTEXT as the session asks, then GO. */
async function negotiate(wire: Wire, session: FuzzSession, ctx: RunContext): Promise<boolean> {
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(NORMAL_CLIENT_FLAGS, 0);
  await wire.send(flags);
  const name = Buffer.from(ctx.exportName);
  const steps: FuzzFrame[] = [];
  if (session.structured) {
    const bytes = encodeOption(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    steps.push({ bytes, expect: 'ok', option: NBD_OPT_STRUCTURED_REPLY });
  }
  if (session.metaContext) {
    const data = metaContextData(name, [Buffer.from('base:allocation')]);
    steps.push({
      bytes: encodeOption(NBD_OPT_SET_META_CONTEXT, data),
      expect: 'ok',
      option: NBD_OPT_SET_META_CONTEXT,
    });
  }
  steps.push({
    bytes: encodeOption(NBD_OPT_GO, infoData(name, [3])),
    expect: 'ok',
    option: NBD_OPT_GO,
  });
  for (const step of steps) {
    await wire.send(step.bytes);
    const before = ctx.totals.violationCount;
    if (!(await checkOptionAnswer(wire, step, ctx))) return false;
    if (ctx.totals.violationCount > before) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Transmission

interface Pending {
  frame: FuzzFrame;
  error: number;
  /** Assembled READ data and which bytes the reply covered. */
  data: Buffer | null;
  covered: Uint8Array | null;
}

/**
 * Sends a batch pipelined, then waits for every answer. Returns false when the session is
 * over (the connection closed, by design or not).
 */
async function runBatch(wire: Wire, frames: FuzzFrame[], ctx: RunContext): Promise<boolean> {
  const pending = new Map<bigint, Pending>();
  let mayClose = false;
  let lastExpect: Expect = 'ok';
  for (const frame of frames) {
    if (frame.cookie !== undefined && frame.expect !== 'none' && frame.expect !== 'close') {
      const read = frame.readLength !== undefined;
      if (read) wire.parser.readLengths.set(frame.cookie, frame.readLength ?? 0);
      const length = frame.readLength ?? 0;
      pending.set(frame.cookie, {
        frame,
        error: 0,
        data: read ? Buffer.alloc(length) : null,
        covered: read ? new Uint8Array(length) : null,
      });
    }
    if (frame.expect === 'errorOrClose' || frame.expect === 'close') mayClose = true;
    lastExpect = frame.expect;
  }
  // Send in slices so the answers of early frames flow while later ones are still going out.
  for (const frame of frames) {
    if (wire.closed) break;
    await wire.send(frame.bytes);
    count(ctx, frame);
    if (frame.reason !== undefined) bump(ctx.totals.refusedByReason, frame.reason);
  }
  const effects: FuzzFrame[] = [];
  const answered = await collectAnswers(wire, pending, ctx, effects);
  // A mutation left unanswered (the connection closed) may or may not have happened.
  for (const entry of pending.values()) {
    if (entry.frame.effect) effects.push({ ...entry.frame, expect: 'answer' });
  }
  applyEffects(ctx.model, ctx.regionOffset, effects);
  if (lastExpect === 'close') {
    if (!(await wire.waitClosed(CLOSE_TIMEOUT_MS))) {
      violation(ctx.totals, ctx.where, 'fatal request frame did not close the connection');
    }
    return false;
  }
  if (lastExpect === 'none') return false;
  if (!answered && !mayClose) {
    violation(
      ctx.totals,
      ctx.where,
      `${pending.size} requests unanswered (${wire.closed ? 'closed' : 'hung'})`,
    );
  }
  return answered && !wire.closed;
}

async function collectAnswers(
  wire: Wire,
  pending: Map<bigint, Pending>,
  ctx: RunContext,
  effects: FuzzFrame[],
): Promise<boolean> {
  while (pending.size > 0) {
    const message = await wire.next(ANSWER_TIMEOUT_MS);
    if (message === null) return false;
    if (message.kind !== 'reply') {
      violation(ctx.totals, ctx.where, `in transmission: ${describe(message)}`);
      return false;
    }
    const entry = pending.get(message.cookie);
    if (entry === undefined) {
      violation(ctx.totals, ctx.where, `reply for cookie ${message.cookie} not pending`);
      return false;
    }
    if (message.error !== 0) entry.error = message.error;
    else placeChunk(entry, message.chunkType, message.payload, ctx);
    if (!message.final) continue;
    pending.delete(message.cookie);
    finish(entry, ctx, effects);
  }
  return true;
}

/** Copies READ data from a simple reply or an OFFSET_DATA / OFFSET_HOLE chunk. */
function placeChunk(
  entry: Pending,
  chunkType: number | null,
  payload: Buffer | null,
  ctx: RunContext,
) {
  if (entry.data === null || entry.covered === null || payload === null) return;
  if (chunkType === null) {
    payload.copy(entry.data, 0);
    entry.covered.fill(1, 0, payload.length);
    return;
  }
  if (chunkType !== 1 && chunkType !== 2) return; // NONE, or metadata: no data to place
  const prefixBytes = chunkType === 1 ? 8 : 12;
  if (payload.length < prefixBytes) {
    violation(ctx.totals, ctx.where, `read chunk type ${chunkType} of ${payload.length} bytes`);
    return;
  }
  const requestOffset = requestOffsetOf(entry.frame);
  const at = Number(payload.readBigUInt64BE(0)) - requestOffset;
  const length = chunkType === 1 ? payload.length - 8 : payload.readUInt32BE(8);
  if (at < 0 || at + length > entry.data.length) {
    violation(
      ctx.totals,
      ctx.where,
      `chunk at ${at}+${length} outside a ${entry.data.length}-byte read`,
    );
    return;
  }
  if (chunkType === 1) payload.copy(entry.data, at, 8);
  else entry.data.fill(0, at, at + length);
  entry.covered.fill(1, at, at + length);
}

function requestOffsetOf(frame: FuzzFrame): number {
  // The request header keeps the offset at byte 16 (magic, flags, type, cookie before it).
  return Number(frame.bytes.readBigUInt64BE(16));
}

function finish(entry: Pending, ctx: RunContext, effects: FuzzFrame[]) {
  ctx.totals.answersChecked++;
  const { frame } = entry;
  const isError = entry.error !== 0;
  if (!answerMatches(frame.expect, isError)) {
    const got = isError ? `errno ${entry.error}` : 'success';
    violation(ctx.totals, ctx.where, `${frameName(frame)} expected ${frame.expect}, got ${got}`);
    return;
  }
  if (frame.effect && (!isError || frame.expect === 'answer')) effects.push(frame);
  if (isError || !frame.verify || entry.data === null || entry.covered === null) return;
  if (entry.covered.indexOf(0) >= 0) {
    violation(
      ctx.totals,
      ctx.where,
      `${frameName(frame)}: successful read did not cover its range`,
    );
    return;
  }
  compareWithModel(entry.data, frame.verify.offset, ctx);
}

function frameName(frame: FuzzFrame): string {
  const type = frame.bytes.length >= 8 ? frame.bytes.readUInt16BE(6) : -1;
  return `request type ${type} cookie ${frame.cookie}${frame.reason ? ` (${frame.reason})` : ''}`;
}

function compareWithModel(data: Buffer, offset: number, ctx: RunContext) {
  const start = offset - ctx.regionOffset;
  let wrong = 0;
  let firstWrong = -1;
  for (let i = 0; i < data.length; i++) {
    if (ctx.model.known[start + i] === 0) continue;
    ctx.totals.bytesVerified++;
    if (data[i] !== ctx.model.data[start + i]) {
      wrong++;
      if (firstWrong < 0) firstWrong = offset + i;
    }
  }
  if (wrong > 0) {
    ctx.totals.wrongBytes += wrong;
    violation(ctx.totals, ctx.where, `${wrong} wrong bytes read, first at offset ${firstWrong}`);
  }
}

/**
 * Applies the successful mutations of one batch. Requests in flight together may run in any
 * order, so a byte that two of them touched is unknown afterwards.
 */
function applyEffects(model: RegionModel, regionOffset: number, frames: FuzzFrame[]) {
  if (frames.length === 0) return;
  const touches = new Uint8Array(model.data.length);
  for (const frame of frames) {
    const effect = frame.effect;
    if (!effect) continue;
    const start = effect.offset - regionOffset;
    for (let i = start; i < start + effect.length; i++)
      touches[i] = Math.min(2, (touches[i] ?? 0) + 1);
  }
  for (const frame of frames) {
    const effect = frame.effect;
    if (!effect) continue;
    const start = effect.offset - regionOffset;
    const definite = effect.data !== null && frame.expect === 'ok';
    if (definite && effect.data) effect.data.copy(model.data, start);
    for (let i = start; i < start + effect.length; i++) {
      model.known[i] = definite && touches[i] === 1 ? 1 : 0;
    }
  }
}

/** Queues many large READs, never reads a reply, holds the connection, then hangs up. */
async function runSlow(wire: Wire, session: FuzzSession, ctx: RunContext): Promise<void> {
  wire.socket.pause();
  for (const frame of session.batches[0] ?? []) {
    if (wire.closed) break;
    // Do not wait for drain: the point is a client whose buffers stay full.
    wire.socket.write(frame.bytes);
    count(ctx, frame);
  }
  await new Promise((resolve) => setTimeout(resolve, session.holdMs));
}

// ---------------------------------------------------------------------------------------------
// The whole run

export interface FuzzRunOptions {
  port: number;
  seed: number;
  framesTarget: number;
  /** Sessions running at once, each in its own region of the export. */
  concurrency: number;
  generator: GeneratorOptions;
  /** Called every few seconds with the totals so far (progress, liveness checks). */
  onProgress?: (totals: FuzzTotals) => void | Promise<void>;
  /** Stops early when it returns true (e.g. the server died). */
  shouldStop?: () => boolean;
}

/** Runs sessions from `concurrency` workers until `framesTarget` frames were sent. */
export async function runFuzz(o: FuzzRunOptions): Promise<FuzzTotals> {
  const totals = emptyTotals();
  let progressAtMs = Date.now();
  const worker = async (index: number) => {
    // Each worker has its own generator so a run replays per worker, whatever the timing.
    const generator = new FuzzGenerator(
      (o.seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0,
      o.generator,
    );
    const regionOffset = index * o.generator.regionBytes;
    const model = new RegionModel(o.generator.regionBytes);
    for (let n = 0; totals.frames < o.framesTarget && !(o.shouldStop?.() ?? false); n++) {
      const session = generator.session(regionOffset);
      const where = `seed ${o.seed} worker ${index} session ${n} (${session.kind})`;
      const startedAtMs = Date.now();
      await runSession(session, {
        port: o.port,
        exportName: o.generator.exportName,
        totals,
        model,
        regionOffset,
        where,
      });
      const tookMs = Date.now() - startedAtMs;
      if (tookMs > totals.slowestSessionMs) {
        totals.slowestSessionMs = tookMs;
        totals.slowestSession = where;
      }
      if (o.onProgress && Date.now() - progressAtMs > 2_000) {
        progressAtMs = Date.now();
        await o.onProgress(totals);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, (_, i) => worker(i)));
  return totals;
}
