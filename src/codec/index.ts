/**
 * The codec layer's public surface: pure functions over 4 KiB pages (hash, fill-word scan,
 * similarity sketch) and the table of page codecs by name and by stored id. Callers import
 * only from here. Ids are forever (types.ts); a payload is always decoded by the codec whose
 * id its object records, whatever the current configuration says.
 *
 * Design note, with the figures that chose it (test/bench/sections/codec.ts: CPU time per
 * page, one core, 3,471 non-uniform anonymous pages of a node process; `npm run bench codec`):
 *
 * | step                                  | native us | TS twin us | bytes/page |
 * |---------------------------------------|----------:|-----------:|-----------:|
 * | fill-word scan                        |      0.01 |       0.09 |            |
 * | sketch, blocks + super-features       |      2.5  |      13.1  |            |
 * | sketch, blocks only                   |      0.03 |       1.1  |            |
 * | SHA-256 (crypto.hash)                 |      4.6  |            |            |
 * | zstd -1 / -3 / -9 encode              |           | 15 / 15 / 78 | 814 / 804 / 799 |
 * | zstd -3 decode                        |           |       5.8  |            |
 * | lz4 encode / decode                   |           | 11 / 5.6   |      1,467 |
 * | zstd -3 with a 64 KiB raw-content dict|           | 18.5 / 7.1 |        784 |
 * | zstd-delta on similar pairs, enc/dec  |           | 15 / 3.8   | 258 (alone: 301) |
 *
 * - The scan and the sketch run in C (native/src/pages.cc), one call per batch, because the
 *   sketch is 5x cheaper there; the TypeScript twins give identical results and take over
 *   when the addon is missing or DIFFSWAP_NATIVE=0.
 * - zstd contexts are created once per level and reused: a fresh context per page costs
 *   more than compressing the page.
 * - A store dictionary (ZstdDictCodec, CodecId.zstdDict) saves 2.5% on unique pages for
 *   20% more CPU; zstd-napi exposes no dictionary trainer, so the measured dictionary is
 *   raw content (16 sampled pages). Not wired into the store: the store would have to keep
 *   the dictionary with its data and pass it to `new ZstdDictCodec()` on open.
 */
import { lz4Codec, rawCodec } from './simple.js';
import { CodecId, type PageCodec } from './types.js';
import { ZSTD_LEVEL_DEFAULT, ZstdCodec, ZstdDeltaCodec } from './zstd.js';

export { CodecError } from './errors.js';
export {
  scanPages,
  scanPagesNative,
  sketchPages,
  sketchPagesNative,
  usingNativePages,
} from './native.js';
export { FILL_WORD_BYTES, fillPage, HASH_BYTES, hashPage, scanPagesTs } from './pages.js';
export { lz4Codec, rawCodec } from './simple.js';
export { type SketchOptions, sketchPagesTs } from './sketch.js';
export * from './types.js';
export { ZSTD_LEVEL_DEFAULT, ZstdCodec, ZstdDeltaCodec, ZstdDictCodec } from './zstd.js';

/** The store's default compressor for unique pages: zstd at the default level. */
export const zstdCodec: PageCodec = new ZstdCodec(ZSTD_LEVEL_DEFAULT);

/** The delta codec: zstd with the reference page as dictionary. */
export const zstdDeltaCodec: PageCodec = new ZstdDeltaCodec(ZSTD_LEVEL_DEFAULT);

/** Every codec that decodes without store state, by id and by name. */
const codecs: readonly PageCodec[] = [rawCodec, zstdCodec, zstdDeltaCodec, lz4Codec];
const byId = new Map(codecs.map((codec) => [codec.id, codec]));
const byName = new Map(codecs.map((codec) => [codec.name, codec]));

/**
 * The codec that decodes payloads stored with `id`. Throws for an unknown id, and for
 * CodecId.zstdDict, whose dictionary belongs to a store (build a ZstdDictCodec instead).
 */
export function codecById(id: number): PageCodec {
  const codec = byId.get(id);
  if (codec !== undefined) return codec;
  if (id === CodecId.zstdDict) {
    throw new RangeError('codec zstd-dict needs its store dictionary: use new ZstdDictCodec()');
  }
  throw new RangeError(`unknown codec id ${id}`);
}

/** The codec registered as `name` ('raw', 'zstd', 'zstd-delta', 'lz4'); throws if none. */
export function codecByName(name: string): PageCodec {
  const codec = byName.get(name);
  if (codec === undefined) {
    throw new RangeError(`unknown codec '${name}' (known: ${[...byName.keys()].join(', ')})`);
  }
  return codec;
}

/** Names of the codecs in the table, for config validation and help texts. */
export function codecNames(): string[] {
  return [...byName.keys()];
}

/** What compresses a store's unique pages. LZ4 has no levels; `level` is ignored for it. */
export interface CompressorOptions {
  codec: 'zstd' | 'lz4';
  level: number;
}

const compressors = new Map<string, PageCodec>();

/**
 * The compressor for these options, one shared instance (and zstd context) per level.
 * Every zstd level writes CodecId.zstd: decoding does not depend on the level.
 */
export function compressorFor(options: CompressorOptions): PageCodec {
  if (options.codec === 'lz4') return lz4Codec;
  if (options.codec !== 'zstd') throw new RangeError(`unknown compressor '${options.codec}'`);
  const key = `zstd:${options.level}`;
  let codec = compressors.get(key);
  if (codec === undefined) {
    codec = options.level === ZSTD_LEVEL_DEFAULT ? zstdCodec : new ZstdCodec(options.level);
    compressors.set(key, codec);
  }
  return codec;
}
