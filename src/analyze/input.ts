/**
 * Input images of `diffswap analyze`: checks every path before any work starts, and turns
 * each file into byte ranges of whole pages. A raw image (VM RAM dump, /proc/PID/mem dump,
 * swap image) is one range; an ELF core file is its PT_LOAD segments' file contents.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { PAGE_SIZE } from '../device/types.js';

/** Exit codes of `diffswap analyze`, documented in its --help. */
export const ExitCode = { ok: 0, failure: 1, usage: 2, input: 3 } as const;

/** A problem with an input file; the message names the file and what is wrong. */
export class InputError extends Error {
  override readonly name = 'InputError';
}

export interface ImageRange {
  /**
   * Byte offset in the file: 0 for raw images; for a core file its segment's offset, page
   * aligned in kernel cores but not in gdb's `gcore` files (pages are read at any offset).
   */
  offset: number;
  /** Whole pages only. */
  pageCount: number;
}

export interface ImageInput {
  path: string;
  sizeBytes: number;
  format: 'raw' | 'elf-core';
  ranges: ImageRange[];
  pageCount: number;
  /** Bytes ignored because they do not make a whole page (reported, not fatal). */
  tailBytes: number;
}

// ELF64 layout (System V gABI): the fields a core file's load segments need.
const ELF_MAGIC = 0x464c457f; // "\x7fELF" read little-endian
const EI_CLASS = 4;
const ELFCLASS64 = 2;
const EI_DATA = 5;
const ELFDATA2LSB = 1;
const E_TYPE = 16;
const ET_CORE = 4;
const E_PHOFF = 32;
const E_PHENTSIZE = 54;
const E_PHNUM = 56;
const ELF64_EHDR_BYTES = 64;
const P_TYPE = 0;
const PT_LOAD = 1;
const P_OFFSET = 8;
const P_FILESZ = 32;
/** Program headers read at most: real cores have a few thousand; bounds a damaged file. */
const PHNUM_MAX = 1 << 16;

/** Checks `path` and describes its page ranges; throws InputError with a clear message. */
export function openImage(path: string): ImageInput {
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InputError(`${path}: no such file`);
    if (code === 'EACCES') throw new InputError(`${path}: permission denied`);
    throw new InputError(`${path}: cannot read (${(error as Error).message})`);
  }
  if (stat.isDirectory()) throw new InputError(`${path}: is a directory, not an image file`);
  if (!stat.isFile()) {
    throw new InputError(`${path}: not a regular file (dump devices or /proc files to a file)`);
  }
  if (stat.size === 0) {
    const hint = path.startsWith('/proc/') ? ' (/proc files report no size: dump to a file)' : '';
    throw new InputError(`${path}: empty file, no pages to analyze${hint}`);
  }
  const fd = openForRead(path);
  try {
    refuseCompressed(fd, stat.size, path);
    const core = elfCoreRanges(fd, stat.size, path);
    if (core !== null) return describe(path, stat.size, 'elf-core', core, 0);
  } finally {
    closeSync(fd);
  }
  const pageCount = Math.floor(stat.size / PAGE_SIZE);
  const tailBytes = stat.size % PAGE_SIZE;
  if (pageCount === 0) {
    throw new InputError(`${path}: ${stat.size} bytes, smaller than one 4 KiB page`);
  }
  return describe(path, stat.size, 'raw', [{ offset: 0, pageCount }], tailBytes);
}

/**
 * Formats whose pages are compressed, so reading them as pages would measure the compressor
 * that wrote them: the compressed kdump formats (makedumpfile's flattened stream and the
 * diskdump file qemu's `dump-guest-memory -z/-l/-s` and `virsh dump --format kdump-*` write),
 * and whole-file compressors. Each is known by a signature of three bytes or more at offset 0
 * (gzip's with its deflate method byte), which raw memory does not start with by chance. What
 * to do instead is in the message.
 */
const COMPRESSED_SIGNATURES: { magic: Buffer; what: string; instead: string }[] = [
  ...['makedumpfile', 'KDUMP   ', 'DISKDUMP'].map((magic) => ({
    magic: Buffer.from(magic, 'latin1'),
    what: 'a compressed kdump file',
    instead:
      "dump guest memory as ELF instead (qemu: 'dump-guest-memory FILE' without -z/-l/-s; " +
      "libvirt: 'virsh dump --memory-only --format elf')",
  })),
  ...(
    [
      ['28b52ffd', 'zstd', 'zstd -d'],
      ['fd377a585a00', 'xz', 'xz -d'],
      ['1f8b08', 'gzip', 'gzip -d'],
      ['04224d18', 'lz4', 'lz4 -d'],
    ] as const
  ).map(([hex, name, command]) => ({
    magic: Buffer.from(hex, 'hex'),
    what: `${name}-compressed`,
    instead: `decompress it first ('${command} FILE')`,
  })),
];

/** Throws InputError when the file starts with the signature of a compressed format. */
function refuseCompressed(fd: number, sizeBytes: number, path: string): void {
  const head = Buffer.alloc(16);
  const got = readSync(fd, head, 0, Math.min(head.length, sizeBytes), 0);
  for (const { magic, what, instead } of COMPRESSED_SIGNATURES) {
    if (got >= magic.length && head.subarray(0, magic.length).equals(magic)) {
      throw new InputError(`${path}: ${what}, not raw pages or an ELF core; ${instead}`);
    }
  }
}

function openForRead(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (error) {
    throw new InputError(`${path}: cannot open (${(error as Error).message})`);
  }
}

function describe(
  path: string,
  sizeBytes: number,
  format: ImageInput['format'],
  ranges: ImageRange[],
  tailBytes: number,
): ImageInput {
  const pageCount = ranges.reduce((sum, range) => sum + range.pageCount, 0);
  return { path, sizeBytes, format, ranges, pageCount, tailBytes };
}

/** The PT_LOAD contents of a 64-bit little-endian ELF core, or null if not one. */
function elfCoreRanges(fd: number, sizeBytes: number, path: string): ImageRange[] | null {
  if (sizeBytes < ELF64_EHDR_BYTES) return null;
  const header = Buffer.alloc(ELF64_EHDR_BYTES);
  readSync(fd, header, 0, ELF64_EHDR_BYTES, 0);
  if (header.readUInt32LE(0) !== ELF_MAGIC || header.readUInt16LE(E_TYPE) !== ET_CORE) {
    return null;
  }
  if (header[EI_CLASS] !== ELFCLASS64 || header[EI_DATA] !== ELFDATA2LSB) {
    throw new InputError(`${path}: ELF core file, but only 64-bit little-endian is supported`);
  }
  const phoff = Number(header.readBigUInt64LE(E_PHOFF));
  const phentsize = header.readUInt16LE(E_PHENTSIZE);
  const phnum = header.readUInt16LE(E_PHNUM);
  if (phnum > PHNUM_MAX || phentsize < 56 || phoff + phnum * phentsize > sizeBytes) {
    throw new InputError(`${path}: damaged ELF core file (program headers out of range)`);
  }
  const table = Buffer.alloc(phnum * phentsize);
  readSync(fd, table, 0, table.length, phoff);
  const ranges: ImageRange[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = i * phentsize;
    if (table.readUInt32LE(at + P_TYPE) !== PT_LOAD) continue;
    const offset = Number(table.readBigUInt64LE(at + P_OFFSET));
    const fileBytes = Number(table.readBigUInt64LE(at + P_FILESZ));
    if (offset >= sizeBytes) continue;
    const pageCount = Math.floor(Math.min(fileBytes, sizeBytes - offset) / PAGE_SIZE);
    if (pageCount > 0) ranges.push({ offset, pageCount });
  }
  if (ranges.length === 0) throw new InputError(`${path}: ELF core file with no memory pages`);
  return ranges;
}
