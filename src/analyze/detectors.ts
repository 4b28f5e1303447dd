/**
 * The similarity detectors `diffswap analyze` compares. The Difference Engine paper's
 * HashSimilarityDetector(k, s) (Gupta et al., OSDI '08, section 4.2) indexes a page under k
 * keys, each the hash of s 64-byte blocks at offsets fixed for all pages; the paper chose
 * (2, 1), which is what the store's `blocks` features are. The store's super-features and
 * its combined sketch are studied beside them, keyed exactly as the store keys them.
 *
 * Detectors that differ only in how many keys they use share one index ("key set"): key j
 * of HashSimilarityDetector(k, 1) is the same for every k, so (1,1), (2,1), (4,1) and (8,1)
 * are slot ranges of one table. That keeps the study at 16 index entries a page.
 */
import { FEATURE_COUNT } from '../codec/index.js';
import { BLOCK_OFFSETS, fmix32, murmurStep } from '../codec/sketch.js';

/**
 * Block offsets of the study. The first two are the store's, so (2, 1) here is the store's
 * block detector; the rest were drawn once at random, 64-byte aligned, like the paper's.
 */
export const STUDY_BLOCK_OFFSETS: readonly number[] = [
  ...BLOCK_OFFSETS,
  384,
  3840,
  2112,
  640,
  3392,
  1792,
];
const BLOCK_COUNT = STUDY_BLOCK_OFFSETS.length;

/** A page's precomputed hashes (ChunkStats arrays) and its index in them. */
export interface PageHashes {
  blocks: Uint32Array;
  features: Uint32Array;
}

/** How a family of detectors derives its keys; key j only ever matches key j. */
export interface KeySet {
  name: string;
  keyCount: number;
  keysOf(hashes: PageHashes, page: number, out: Uint32Array): void;
}

/** The store's sketch, as stored: slots 0-1 blocks, 2-3 super-features. */
export const storeKeys: KeySet = {
  name: 'store',
  keyCount: FEATURE_COUNT,
  keysOf(hashes, page, out) {
    for (let j = 0; j < FEATURE_COUNT; j++) out[j] = hashes.features[page * FEATURE_COUNT + j]!;
  },
};

/** HashSimilarityDetector(., s) keys: key j hashes study blocks j*s .. j*s+s-1. */
function blockKeys(s: number): KeySet {
  const keyCount = BLOCK_COUNT / s;
  return {
    name: `blocks s=${s}`,
    keyCount,
    keysOf(hashes, page, out) {
      const at = page * BLOCK_COUNT;
      for (let j = 0; j < keyCount; j++) {
        if (s === 1) {
          out[j] = hashes.blocks[at + j]!;
          continue;
        }
        let h = 0x7f4a7c15;
        let any = false;
        for (let b = j * s; b < (j + 1) * s; b++) {
          const block = hashes.blocks[at + b]!;
          if (block !== 0) any = true;
          h = murmurStep(h, block);
        }
        // A key made only of uniform blocks would pair unrelated pages, as in the sketch.
        out[j] = any ? fmix32(h) || 1 : 0;
      }
    },
  };
}

/** The key sets, indexed by `Detector.keySet`. */
export const KEY_SETS: readonly KeySet[] = [storeKeys, blockKeys(1), blockKeys(2)];

/** A detector: which key set, which of its slots. */
export interface Detector {
  name: string;
  keySet: number;
  slots: readonly number[];
}

function range(count: number): number[] {
  return Array.from({ length: count }, (_, i) => i);
}

/** Every detector in the study, the store's default first. */
export const STUDY_DETECTORS: readonly Detector[] = [
  { name: 'store default: blocks (paper k=2 s=1)', keySet: 0, slots: [0, 1] },
  { name: 'store similarity=both', keySet: 0, slots: [0, 1, 2, 3] },
  { name: 'store similarity=superfeatures', keySet: 0, slots: [2, 3] },
  ...[1, 4, 8].map((k) => ({ name: `paper blocks k=${k} s=1`, keySet: 1, slots: range(k) })),
  ...[1, 2, 4].map((k) => ({ name: `paper blocks k=${k} s=2`, keySet: 2, slots: range(k) })),
];
