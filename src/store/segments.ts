/**
 * Append-only segment files holding object payloads.
 *
 * Design note. Each payload is one record: a RECORD_HEADER_BYTES header (magic, payload
 * length, object id, codec, CRC-32 of header and payload) then the payload. Records are
 * appended to the active segment until it reaches `segmentBytesMax`, then a new segment
 * starts; sealed segments never change again and die whole after compaction copied their
 * live records out. A batch stages its records in memory, writes them with one positioned
 * write per segment, and fdatasyncs before the index commit that points at them, so a
 * committed object never refers to bytes that are not on disk. The committed size of each
 * segment lives in the index: bytes past it are a torn tail from a crash and are cut off at
 * open, and files the index does not know are deleted (a crash between creating a segment
 * and committing it, or between committing a compaction and unlinking its source).
 * A file's name is durable only once its directory is: after creating or deleting segment
 * files, the next writeStaged() fsyncs the directory too, before the index commit that names
 * them (else a power cut could leave the index naming a segment whose entry was lost).
 * Only create() and reconcile() make files; reads and writes of a segment whose file is gone
 * fail with ENOENT rather than making an empty one.
 *
 * Reclaiming in place. Copying live records out needs free space for them, which a full
 * disk does not have. So compaction first gives the blocks of dead records back to the
 * filesystem where they lie: a run of adjacent dead records gets one filler header (object
 * id 0, codec FILLER_CODEC, covering the whole run, checksummed over the header alone),
 * synced, and then the blocks inside the run are punched out (fallocate PUNCH_HOLE; the
 * file keeps its size and reads zeros there). Scans step over a filler by its length.
 * Only dead bytes are touched, so a crash at any point leaves every live record intact.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  constants as fsConstants,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  unlinkSync,
  write,
  writeSync,
} from 'node:fs';
import { open as openAsync } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import { DeviceError } from '../device/types.js';
import { canPunchHoles, punchHole } from '../native/host.js';

/** 'DSR1' little-endian: marks the start of a record for scrubs and compaction. */
export const RECORD_MAGIC = 0x31525344;
const H_MAGIC = 0; // u32
const H_LENGTH = 4; // u32 payload bytes
const H_OBJECT_ID = 8; // u48 object id
const H_CODEC = 14; // u16 codec id
const H_RESERVED = 16; // u32, zero
const H_CHECKSUM = 20; // u32 CRC-32 of header bytes [0, H_CHECKSUM) then payload
/** Bytes of a record header. */
export const RECORD_HEADER_BYTES = 24;
/** Codec id of a filler record: dead bytes reclaimed in place (see the design note). */
export const FILLER_CODEC = 0xffff;
/** Filesystem block size assumed for punching: only whole blocks inside a run are freed. */
const PUNCH_BLOCK_BYTES = 4096;

const writeAsync = promisify(write);
const fdatasyncAsync = promisify(fdatasync);

/** Where a record landed. */
export interface RecordLocation {
  segmentId: number;
  offset: number;
}

/** A record as found by a scan of a segment (compaction, check). */
export interface ScannedRecord {
  offset: number;
  /** Bytes the record takes in the segment, header included. */
  bytes: number;
  objectId: number;
  codec: number;
  payload: Buffer;
}

/** Name of a segment file; ids are zero-padded so a listing sorts by age. */
export function segmentFileName(id: number): string {
  return `seg-${id.toString().padStart(10, '0')}.dat`;
}

function parseSegmentFileName(name: string): number | null {
  const match = /^seg-(\d{10})\.dat$/.exec(name);
  return match?.[1] ? Number(match[1]) : null;
}

/** Bytes a payload of `length` takes in a segment. */
export function recordBytes(length: number): number {
  return RECORD_HEADER_BYTES + length;
}

const EMPTY = Buffer.alloc(0);

/** A filler's header: its checksum covers the header alone (the payload is punched out). */
function fillerHeader(length: number): Buffer {
  const header = Buffer.alloc(RECORD_HEADER_BYTES);
  header.writeUInt32LE(RECORD_MAGIC, H_MAGIC);
  header.writeUInt32LE(length, H_LENGTH);
  header.writeUInt16LE(FILLER_CODEC, H_CODEC);
  header.writeUInt32LE(crc32(header.subarray(0, H_CHECKSUM)), H_CHECKSUM);
  return header;
}

function isFiller(header: Buffer): boolean {
  return (
    header.readUInt32LE(H_MAGIC) === RECORD_MAGIC &&
    header.readUInt16LE(H_CODEC) === FILLER_CODEC &&
    header.readUIntLE(H_OBJECT_ID, 6) === 0 &&
    crc32(header.subarray(0, H_CHECKSUM)) === header.readUInt32LE(H_CHECKSUM)
  );
}

/** Builds the header of a record for `payload`. */
function encodeHeader(objectId: number, codec: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(RECORD_HEADER_BYTES);
  header.writeUInt32LE(RECORD_MAGIC, H_MAGIC);
  header.writeUInt32LE(payload.length, H_LENGTH);
  header.writeUIntLE(objectId, H_OBJECT_ID, 6);
  header.writeUInt16LE(codec, H_CODEC);
  header.writeUInt32LE(0, H_RESERVED);
  const sum = crc32(payload, crc32(header.subarray(0, H_CHECKSUM)));
  header.writeUInt32LE(sum, H_CHECKSUM);
  return header;
}

/** Checks a header + payload pair; returns an error message or null when intact. */
function verifyRecord(header: Buffer, payload: Buffer, objectId: number | null): string | null {
  if (header.readUInt32LE(H_MAGIC) !== RECORD_MAGIC) return 'bad record magic';
  if (header.readUInt32LE(H_LENGTH) !== payload.length) return 'record length mismatch';
  if (objectId !== null && header.readUIntLE(H_OBJECT_ID, 6) !== objectId) {
    return 'record belongs to another object';
  }
  const sum = crc32(payload, crc32(header.subarray(0, H_CHECKSUM)));
  if (sum !== header.readUInt32LE(H_CHECKSUM)) return 'record checksum mismatch';
  return null;
}

interface StagedSegment {
  /** File offset of the first staged byte: the segment's size before this batch. */
  startOffset: number;
  chunks: Buffer[];
  bytes: number;
}

/** The segment files of one store. Sizes are the committed ones plus what is staged. */
export class SegmentFiles {
  readonly #dir: string;
  readonly #openFilesMax: number;
  /** Open descriptors, least recently used first; bounded by `openFilesMax`. */
  readonly #fds = new Map<number, number>();
  readonly #staged = new Map<number, StagedSegment>();
  /** Segments with a write in progress: their descriptors must not be closed. */
  readonly #pinned = new Set<number>();
  /** Files were created or deleted since the directory was last synced. */
  #dirDirty = false;

  /** `openFilesMax` caps descriptors: a large store has more segments than the fd limit. */
  constructor(dir: string, openFilesMax: number) {
    this.#dir = dir;
    this.#openFilesMax = openFilesMax;
    mkdirSync(dir, { recursive: true });
  }

  /**
   * Makes the files agree with the committed table: cuts torn tails, deletes unknown files,
   * and creates missing empty ones (a segment committed before it received any record).
   * Returns the ids of deleted files, for the log.
   */
  reconcile(committed: Map<number, { sizeBytes: number }>): number[] {
    const deleted: number[] = [];
    const seen = new Set<number>();
    for (const name of readdirSync(this.#dir)) {
      const id = parseSegmentFileName(name);
      if (id === null) continue;
      const record = committed.get(id);
      if (!record) {
        this.remove(id);
        deleted.push(id);
        continue;
      }
      seen.add(id);
      const fd = this.#fd(id);
      ftruncateSync(fd, record.sizeBytes);
    }
    for (const [id, record] of committed) {
      if (seen.has(id)) continue;
      if (record.sizeBytes > 0) {
        throw new DeviceError('EIO', `segment ${segmentFileName(id)} is missing`);
      }
      this.#fd(id, true);
    }
    if (this.#dirDirty) this.#syncDir();
    return deleted;
  }

  /**
   * Stages a record at `offset` of segment `segmentId` (the caller tracks sizes and
   * rotation). The payload is referenced, not copied: keep it unchanged until written.
   */
  stage(segmentId: number, offset: number, objectId: number, codec: number, payload: Buffer) {
    let staged = this.#staged.get(segmentId);
    if (!staged) {
      staged = { startOffset: offset, chunks: [], bytes: 0 };
      this.#staged.set(segmentId, staged);
    }
    assert.equal(staged.startOffset + staged.bytes, offset, 'records must be appended in order');
    staged.chunks.push(encodeHeader(objectId, codec, payload), payload);
    staged.bytes += recordBytes(payload.length);
  }

  /** Writes every staged record and syncs the files; resolves once they are on disk. */
  async writeStaged(): Promise<void> {
    const work = [...this.#staged].map(async ([id, staged]) => {
      const fd = this.#fd(id);
      this.#pinned.add(id);
      const data = Buffer.concat(staged.chunks, staged.bytes);
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await writeAsync(
          fd,
          data,
          done,
          data.length - done,
          staged.startOffset + done,
        );
        done += bytesWritten;
      }
      await fdatasyncAsync(fd);
    });
    this.#staged.clear();
    try {
      await Promise.all(work);
    } finally {
      this.#pinned.clear();
    }
    if (this.#dirDirty) await this.#syncDirAsync();
  }

  /** Makes created and deleted file names durable (see the design note). */
  #syncDir(): void {
    this.#dirDirty = false;
    const fd = openSync(this.#dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  async #syncDirAsync(): Promise<void> {
    this.#dirDirty = false;
    const handle = await openAsync(this.#dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Drops staged records (a failed batch). */
  discardStaged(): void {
    this.#staged.clear();
  }

  /**
   * Reads and verifies the payload of `objectId` at `offset`; throws DeviceError EIO when
   * the record is damaged. Synchronous: segment reads hit the page cache in the common case
   * and a read is latency-bound (a stalled vCPU waits on it).
   */
  readPayload(segmentId: number, offset: number, length: number, objectId: number): Buffer {
    const [payload] = this.readPayloads(segmentId, offset, [{ length, objectId }]);
    assert.ok(payload);
    return payload;
  }

  /**
   * Reads records that lie back to back from `offset` (the pages of one swap cluster are
   * written together, so their records usually do) with one read, and verifies each; the
   * payloads are views of one buffer. Throws DeviceError EIO naming the first bad record.
   */
  readPayloads(
    segmentId: number,
    offset: number,
    records: readonly { length: number; objectId: number }[],
  ): Buffer[] {
    const fd = this.#fd(segmentId);
    let total = 0;
    for (const record of records) total += recordBytes(record.length);
    const bytes = Buffer.allocUnsafe(total);
    const got = readSync(fd, bytes, 0, total, offset);
    const payloads: Buffer[] = [];
    let at = 0;
    for (const { length, objectId } of records) {
      const end = at + recordBytes(length);
      const header = bytes.subarray(at, at + RECORD_HEADER_BYTES);
      const payload = bytes.subarray(at + RECORD_HEADER_BYTES, end);
      const problem = got < end ? 'record cut short' : verifyRecord(header, payload, objectId);
      if (problem) {
        throw new DeviceError(
          'EIO',
          `object ${objectId} in ${segmentFileName(segmentId)}@${offset + at}: ${problem}`,
        );
      }
      payloads.push(payload);
      at = end;
    }
    return payloads;
  }

  /**
   * Reads the records of a segment from `fromOffset` up to `endOffset` (its committed size),
   * at most about `maxBytes` of them. Returns them and the offset where reading stopped.
   * A damaged record ends the scan with an error.
   */
  scan(
    segmentId: number,
    fromOffset: number,
    endOffset: number,
    maxBytes: number,
  ): { records: ScannedRecord[]; nextOffset: number } {
    const fd = this.#fd(segmentId);
    const want = Math.min(endOffset - fromOffset, Math.max(maxBytes, 2 * 4096 + 64));
    const chunk = Buffer.allocUnsafe(want);
    const got = readSync(fd, chunk, 0, want, fromOffset);
    const records: ScannedRecord[] = [];
    let at = 0;
    while (at + RECORD_HEADER_BYTES <= got) {
      const header = chunk.subarray(at, at + RECORD_HEADER_BYTES);
      const length = header.readUInt32LE(H_LENGTH);
      if (isFiller(header)) {
        // Reclaimed dead bytes: step over them without reading what was punched out.
        if (fromOffset + at + recordBytes(length) > endOffset) {
          throw new DeviceError(
            'EIO',
            `${segmentFileName(segmentId)}@${fromOffset + at}: filler past the end`,
          );
        }
        records.push({
          offset: fromOffset + at,
          bytes: recordBytes(length),
          objectId: 0,
          codec: FILLER_CODEC,
          payload: EMPTY,
        });
        at += recordBytes(length);
        continue;
      }
      if (at + recordBytes(length) > got) break;
      const payload = chunk.subarray(at + RECORD_HEADER_BYTES, at + recordBytes(length));
      const problem = verifyRecord(header, payload, null);
      if (problem) {
        throw new DeviceError(
          'EIO',
          `${segmentFileName(segmentId)}@${fromOffset + at}: ${problem}`,
        );
      }
      records.push({
        offset: fromOffset + at,
        bytes: recordBytes(length),
        objectId: header.readUIntLE(H_OBJECT_ID, 6),
        codec: header.readUInt16LE(H_CODEC),
        payload,
      });
      at += recordBytes(length);
    }
    if (records.length === 0 && fromOffset < endOffset) {
      throw new DeviceError('EIO', `${segmentFileName(segmentId)}@${fromOffset}: torn record`);
    }
    return { records, nextOffset: fromOffset + at };
  }

  /**
   * Reclaims the dead runs `[start, end)` of a sealed part of a segment in place (see the
   * design note): writes their filler headers, syncs, then punches the whole blocks inside
   * each run. Returns the bytes punched, or null when the filesystem cannot punch holes
   * (nothing is changed then).
   */
  reclaim(segmentId: number, runs: { start: number; end: number }[]): number | null {
    const fd = this.#fd(segmentId);
    const holes: { offset: number; length: number }[] = [];
    for (const run of runs) {
      const first = Math.ceil((run.start + RECORD_HEADER_BYTES) / PUNCH_BLOCK_BYTES);
      const last = Math.floor(run.end / PUNCH_BLOCK_BYTES);
      if (last > first) {
        holes.push({
          offset: first * PUNCH_BLOCK_BYTES,
          length: (last - first) * PUNCH_BLOCK_BYTES,
        });
      }
    }
    if (holes.length === 0) return 0;
    if (!canPunchHoles()) return null;
    for (const run of runs) {
      writeSync(
        fd,
        fillerHeader(run.end - run.start - RECORD_HEADER_BYTES),
        0,
        RECORD_HEADER_BYTES,
        run.start,
      );
    }
    fdatasyncSync(fd);
    let punched = 0;
    for (const hole of holes) {
      const errno = punchHole(fd, hole.offset, hole.length);
      if (errno !== 0) return punched === 0 ? null : punched;
      punched += hole.length;
    }
    return punched;
  }

  /** Deletes a segment file (after the commit that dropped it from the index). */
  remove(segmentId: number): void {
    const fd = this.#fds.get(segmentId);
    if (fd !== undefined) {
      closeSync(fd);
      this.#fds.delete(segmentId);
    }
    try {
      unlinkSync(join(this.#dir, segmentFileName(segmentId)));
      this.#dirDirty = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  /**
   * Creates the file of a new segment now, so reconcile() sees it if the batch commits; its
   * name is synced with the batch's records (writeStaged).
   */
  create(segmentId: number): void {
    this.#fd(segmentId, true);
    this.#dirDirty = true;
  }

  close(): void {
    for (const fd of this.#fds.values()) closeSync(fd);
    this.#fds.clear();
  }

  #fd(segmentId: number, create = false): number {
    const cached = this.#fds.get(segmentId);
    if (cached !== undefined) {
      // Move to the most recently used end.
      this.#fds.delete(segmentId);
      this.#fds.set(segmentId, cached);
      return cached;
    }
    // Read-write, but not O_APPEND: records go at explicit offsets (Linux would ignore the
    // offset of a positioned write on an O_APPEND descriptor).
    const path = join(this.#dir, segmentFileName(segmentId));
    const flags = fsConstants.O_RDWR | (create ? fsConstants.O_CREAT : 0);
    const fd = openSync(path, flags, 0o644);
    this.#fds.set(segmentId, fd);
    this.#evict();
    return fd;
  }

  #evict(): void {
    if (this.#fds.size <= this.#openFilesMax) return;
    for (const [id, fd] of this.#fds) {
      if (this.#fds.size <= this.#openFilesMax) return;
      // A descriptor an asynchronous write is using stays open until the write is done.
      if (this.#pinned.has(id)) continue;
      closeSync(fd);
      this.#fds.delete(id);
    }
  }
}
