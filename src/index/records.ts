/**
 * Binary layouts of the records the page store keeps in LMDB: page-map values and object
 * records. Fixed layouts instead of msgpack because they are stored once per page and per
 * object: a few dozen bytes each is the index overhead every stored page pays.
 *
 * All integers little-endian. Object ids and words are at most 48 / 64 bits.
 */
import assert from 'node:assert/strict';

/** How a page-map entry was stored when written; also the per-export accounting bucket. */
export const MappingTag = {
  /** The page is one repeated 64-bit word (zero page: word 0); no object. */
  uniform: 0,
  /** The page reused an existing object with the same bytes. */
  duplicate: 1,
  /** The page got a new delta object. */
  delta: 2,
  /** The page got a new compressed object. */
  compressed: 3,
  /** The page got a new raw object. */
  raw: 4,
} as const;
export type MappingTagValue = (typeof MappingTag)[keyof typeof MappingTag];

/** A page-map value: either a fill word (tag uniform) or an object id. */
export interface Mapping {
  tag: MappingTagValue;
  /** The fill word when tag is uniform, else 0n. */
  word: bigint;
  /** The object id when tag is not uniform, else 0. */
  objectId: number;
}

/** Page-map value: tag (1 byte) then the word or object id (8 bytes). */
export const MAPPING_BYTES = 9;
const MAPPING_TAG_AT = 0;
const MAPPING_VALUE_AT = 1;

export function encodeMapping(mapping: Mapping): Buffer {
  const out = Buffer.allocUnsafe(MAPPING_BYTES);
  out.writeUInt8(mapping.tag, MAPPING_TAG_AT);
  if (mapping.tag === MappingTag.uniform) out.writeBigUInt64LE(mapping.word, MAPPING_VALUE_AT);
  else out.writeBigUInt64LE(BigInt(mapping.objectId), MAPPING_VALUE_AT);
  return out;
}

/** Decodes a page-map value; `src` may be a reused buffer, nothing of it is kept. */
export function decodeMapping(src: Uint8Array): Mapping {
  assert.equal(src.length, MAPPING_BYTES, 'page-map value has the wrong length');
  const buf = Buffer.from(src.buffer, src.byteOffset, src.length);
  const tag = buf.readUInt8(MAPPING_TAG_AT) as MappingTagValue;
  assert.ok(tag <= MappingTag.raw, `unknown page-map tag ${tag}`);
  const value = buf.readBigUInt64LE(MAPPING_VALUE_AT);
  if (tag === MappingTag.uniform) return { tag, word: value, objectId: 0 };
  return { tag, word: 0n, objectId: Number(value) };
}

/** Bytes of the content key stored per object: group (4) + first 8 bytes of SHA-256. */
export const CONTENT_KEY_BYTES = 12;

/** One immutable stored page (only its counts change), as DESIGN.md's data model. */
export interface ObjectRecord {
  /** Codec id that wrote the payload (src/codec/types.ts CodecId). */
  codec: number;
  /** Base object id for a delta, 0 otherwise. A base is never itself a delta. */
  baseId: number;
  /** Sharing group id; dedup and deltas stay within one group. */
  groupId: number;
  /** Export id that created it; its per-export stats carry the payload bytes. */
  ownerId: number;
  /** Page-map entries pointing at it. */
  mapCount: number;
  /** Delta objects using it as their base. */
  deltaCount: number;
  segmentId: number;
  /** Offset of the record header in the segment. */
  offset: number;
  /** Payload bytes (after the record header). */
  length: number;
  /** Content-index key it is indexed under, or null when not indexed. */
  contentKey: Buffer | null;
}

const O_CODEC = 0; // u8
const O_HAS_CONTENT = 1; // u8: 1 when contentKey is present
const O_GROUP = 2; // u32
const O_OWNER = 6; // u32
const O_BASE = 10; // u48
const O_MAP_COUNT = 16; // u32
const O_DELTA_COUNT = 20; // u32
const O_SEGMENT = 24; // u32
const O_OFFSET = 28; // u48
const O_LENGTH = 34; // u32
const O_CONTENT = 38; // CONTENT_KEY_BYTES, only when O_HAS_CONTENT is 1
/**
 * Bytes of an encoded object record: without a content key, and with one. Every object pays
 * these (about 1% of a compressed page each 40 bytes), so nothing is kept that no path reads.
 */
export const OBJECT_RECORD_BYTES = O_CONTENT;
export const OBJECT_RECORD_WITH_CONTENT_BYTES = O_CONTENT + CONTENT_KEY_BYTES;
const U48 = 6;

export function encodeObject(record: ObjectRecord): Buffer {
  assert.ok(record.mapCount >= 0 && record.deltaCount >= 0, 'negative reference count');
  const out = Buffer.alloc(
    record.contentKey ? OBJECT_RECORD_WITH_CONTENT_BYTES : OBJECT_RECORD_BYTES,
  );
  out.writeUInt8(record.codec, O_CODEC);
  out.writeUInt8(record.contentKey ? 1 : 0, O_HAS_CONTENT);
  out.writeUInt32LE(record.groupId, O_GROUP);
  out.writeUInt32LE(record.ownerId, O_OWNER);
  out.writeUIntLE(record.baseId, O_BASE, U48);
  out.writeUInt32LE(record.mapCount, O_MAP_COUNT);
  out.writeUInt32LE(record.deltaCount, O_DELTA_COUNT);
  out.writeUInt32LE(record.segmentId, O_SEGMENT);
  out.writeUIntLE(record.offset, O_OFFSET, U48);
  out.writeUInt32LE(record.length, O_LENGTH);
  if (record.contentKey) {
    assert.equal(record.contentKey.length, CONTENT_KEY_BYTES, 'content key length');
    record.contentKey.copy(out, O_CONTENT);
  }
  return out;
}

export function decodeObject(src: Uint8Array): ObjectRecord {
  const buf = Buffer.from(src.buffer, src.byteOffset, src.length);
  const hasContent = buf.readUInt8(O_HAS_CONTENT) === 1;
  const expected = hasContent ? OBJECT_RECORD_WITH_CONTENT_BYTES : OBJECT_RECORD_BYTES;
  assert.equal(src.length, expected, 'object record has the wrong length');
  return {
    codec: buf.readUInt8(O_CODEC),
    baseId: buf.readUIntLE(O_BASE, U48),
    groupId: buf.readUInt32LE(O_GROUP),
    ownerId: buf.readUInt32LE(O_OWNER),
    mapCount: buf.readUInt32LE(O_MAP_COUNT),
    deltaCount: buf.readUInt32LE(O_DELTA_COUNT),
    segmentId: buf.readUInt32LE(O_SEGMENT),
    offset: buf.readUIntLE(O_OFFSET, U48),
    length: buf.readUInt32LE(O_LENGTH),
    contentKey: hasContent
      ? Buffer.from(buf.subarray(O_CONTENT, O_CONTENT + CONTENT_KEY_BYTES))
      : null,
  };
}
