/**
 * The two codecs that need no context: raw (the page itself) and LZ4 (what zram stores,
 * kept for comparison and as a fast ingest codec). LZ4 payloads are lz4-napi's block format:
 * a 4-byte little-endian decoded length, then one LZ4 block.
 */
import lz4 from 'lz4-napi';
import { PAGE_SIZE } from '../device/types.js';
import { CodecError } from './errors.js';
import { CodecId, type PageCodec } from './types.js';
import { pageView } from './zstd.js';

/** The page itself: the fallback when no encoding pays. */
export const rawCodec: PageCodec = {
  id: CodecId.raw,
  name: 'raw',
  delta: false,
  encode(page, pageOffset, _ref, limitBytes) {
    if (PAGE_SIZE >= limitBytes) return null;
    return Buffer.from(pageView(page, pageOffset));
  },
  decode(payload, _ref, out, outOffset) {
    if (payload.length !== PAGE_SIZE) {
      throw new CodecError('raw', `payload of ${payload.length} bytes, not a page`);
    }
    payload.copy(pageView(out, outOffset));
  },
};

/** Bytes of lz4-napi's decoded-length prefix. */
const LZ4_PREFIX_BYTES = 4;

/** LZ4 block of the page, as zram stores it (lz4-napi; no level to choose). */
export const lz4Codec: PageCodec = {
  id: CodecId.lz4,
  name: 'lz4',
  delta: false,
  encode(page, pageOffset, _ref, limitBytes) {
    const payload = lz4.compressSync(pageView(page, pageOffset));
    return payload.length >= limitBytes ? null : payload;
  },
  decode(payload, _ref, out, outOffset) {
    // lz4-napi allocates whatever the length prefix claims: check it first, or a damaged
    // payload could make it allocate gigabytes.
    if (payload.length < LZ4_PREFIX_BYTES || payload.readUInt32LE(0) !== PAGE_SIZE) {
      throw new CodecError('lz4', 'damaged payload (length prefix is not one page)');
    }
    let page: Buffer;
    try {
      page = lz4.uncompressSync(payload);
    } catch (error) {
      throw new CodecError('lz4', `damaged payload (${(error as Error).message})`);
    }
    if (page.length !== PAGE_SIZE) {
      throw new CodecError('lz4', `decoded ${page.length} bytes, not a page`);
    }
    page.copy(pageView(out, outOffset));
  },
};
