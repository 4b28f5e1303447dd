/**
 * Writes the benchmark's memory images to a folder, for `diffswap analyze` and for trying the
 * store on real memory: `node dist/test/tools/memory-images.js DIR [--no-guests]`.
 * DIR gets processes.img (node, python3 and cc1, 128 MiB each at most) and, unless
 * --no-guests, guest-idle.img and guest-busy.img (the test guest's RAM under qemu; needs the
 * guest built by test/install-deps.sh). See test/bench/lib/images.ts.
 */
import { mkdir } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { guestImages, processImage } from '../bench/lib/images.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { 'no-guests': { type: 'boolean', default: false } },
});
const dir = positionals[0];
if (dir === undefined) {
  console.error('usage: node dist/test/tools/memory-images.js DIR [--no-guests]');
  process.exit(2);
}
await mkdir(dir, { recursive: true });
const images = [await processImage(dir, 128 << 20)];
if (!values['no-guests']) images.push(...(await guestImages(dir)));
for (const image of images) console.log(`${image.path}\t${image.bytes} bytes`);
