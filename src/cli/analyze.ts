/**
 * `diffswap analyze FILE... [--json OUT] [--chart OUT.svg|.png] [--sample N] [--workers N]`:
 * what each technique would save on memory images (src/analyze). Prints the tables on
 * stdout, a progress bar on stderr when it is a terminal. The chart is drawn as SVG; a PNG is
 * that SVG rasterised by librsvg's rsvg-convert (a rasteriser with text layout is far more
 * than this command should carry, and librsvg is one package on every Linux distribution).
 */
import { spawn, spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import {
  type AnalysisReport,
  analyzeImages,
  ExitCode,
  InputError,
  openImages,
  SAMPLE_SIZE_DEFAULT,
} from '../analyze/index.js';
import { renderSvg, renderText } from '../analyze/report.js';
import { progressBar } from './progress.js';

/** The --help text, exit codes included. */
export const ANALYZE_USAGE = `Usage: diffswap analyze FILE... [options]

Measures what each storage technique would save on raw memory images: VM RAM dumps,
/proc/PID/mem dumps, swap images, ELF core files (their memory segments: gcore, kernel and
qemu dump-guest-memory cores). Compressed dumps (kdump formats, zstd, xz, gzip, lz4) are
refused with what to do instead. Every figure comes from the store's own codecs; costly
comparisons run on a seeded sample and say so.

Options:
  --json OUT        also write the full report as JSON to OUT ('-': stdout, no tables)
  --chart OUT       also write a bar chart of the savings: OUT.svg, or OUT.png
                    (PNG needs rsvg-convert: Debian/Ubuntu package librsvg2-bin)
  --sample N        pages (or pairs) per sampled comparison (default ${SAMPLE_SIZE_DEFAULT})
  --exact-only      skip the sampled comparisons: exact figures only, fastest
  --workers N       worker threads (default: one per core, here ${availableParallelism()})
  --seed N          seed of the samples (default 1): same seed, same sample
  --no-progress     no progress bar even on a terminal
  -h, --help        this text

A file whose size is not a multiple of 4 KiB is analyzed up to its last whole page; the
tail is reported. Exit codes: 0 report written, 1 runtime failure, 2 bad usage,
3 bad input file (missing, a directory, empty, unreadable, damaged core file,
compressed dump).`;

interface CliOptions {
  paths: string[];
  json: string | undefined;
  chart: string | undefined;
  sampleSize: number;
  workers: number;
  seed: number;
  exactOnly: boolean;
  progress: boolean;
}

class UsageError extends Error {}

function parseCount(name: string, value: string | undefined, fallback: number, min: number) {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < min) {
    throw new UsageError(`--${name} needs an integer >= ${min}, got '${value}'`);
  }
  return parsed;
}

function parseCli(argv: string[]): CliOptions | 'help' {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        json: { type: 'string' },
        chart: { type: 'string' },
        sample: { type: 'string' },
        workers: { type: 'string' },
        seed: { type: 'string' },
        'exact-only': { type: 'boolean' },
        'no-progress': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  if (values.help) return 'help';
  if (parsed.positionals.length === 0) throw new UsageError('no image files given');
  const chart = values.chart as string | undefined;
  if (chart !== undefined && chartFormat(chart) === null) {
    throw new UsageError(`--chart writes .svg or .png: give a name ending in one (got '${chart}')`);
  }
  return {
    paths: parsed.positionals,
    json: values.json as string | undefined,
    chart,
    sampleSize: parseCount('sample', values.sample as string | undefined, SAMPLE_SIZE_DEFAULT, 1),
    workers: parseCount('workers', values.workers as string | undefined, availableParallelism(), 0),
    seed: parseCount('seed', values.seed as string | undefined, 1, 0),
    exactOnly: values['exact-only'] === true,
    progress: values['no-progress'] !== true,
  };
}

/** Bytes read of the images, and the rate. */
function bytesDetail(done: number, total: number, elapsedMs: number): string {
  const mib = (bytes: number) => (bytes / (1 << 20)).toFixed(0);
  const rate = done / (1 << 20) / Math.max(0.001, elapsedMs / 1000);
  return `${mib(done)}/${mib(total)} MiB ${rate.toFixed(0)} MiB/s`;
}

async function writeOutputs(report: AnalysisReport, options: CliOptions): Promise<void> {
  if (options.json === '-') {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } else {
    process.stdout.write(renderText(report));
    if (options.json !== undefined) {
      await writeFile(options.json, `${JSON.stringify(report, null, 2)}\n`);
    }
  }
  if (options.chart === undefined) return;
  const svg = renderSvg(report);
  if (chartFormat(options.chart) === 'png') await writePng(options.chart, svg);
  else await writeFile(options.chart, svg);
}

function chartFormat(path: string): 'svg' | 'png' | null {
  const lower = path.toLowerCase();
  return lower.endsWith('.svg') ? 'svg' : lower.endsWith('.png') ? 'png' : null;
}

const RSVG = 'rsvg-convert';
/** Pixels per SVG unit in the PNG: twice, so the chart stays sharp on dense screens. */
const PNG_ZOOM = 2;

/** Why a PNG chart cannot be drawn here, or null when rsvg-convert runs. */
function pngUnavailable(): string | null {
  const probe = spawnSync(RSVG, ['--version'], { stdio: 'ignore', timeout: 10_000 });
  if (probe.error === undefined && probe.status === 0) return null;
  return (
    `--chart .png needs ${RSVG} (Debian/Ubuntu package librsvg2-bin), which does not run ` +
    `here${probe.error ? ` (${probe.error.message})` : ''}; install it or write an .svg chart`
  );
}

/** Rasterises `svg` into the PNG file `path` with rsvg-convert. */
function writePng(path: string, svg: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(RSVG, ['--format', 'png', '--zoom', String(PNG_ZOOM), '--output', path], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      if (stderr.length < 4096) stderr += chunk.toString();
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (code === 0) resolve();
      else reject(new Error(`${RSVG} exited with ${code}: ${stderr.trim()}`));
    });
    child.stdin.end(svg);
  });
}

/** Entry point of `diffswap analyze`; resolves to the exit code. */
export async function run(argv: string[]): Promise<number> {
  let options: CliOptions | 'help';
  try {
    options = parseCli(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`diffswap analyze: ${error.message}\n\n${ANALYZE_USAGE}\n`);
    return ExitCode.usage;
  }
  if (options === 'help') {
    process.stdout.write(`${ANALYZE_USAGE}\n`);
    return ExitCode.ok;
  }
  // Found out before the analysis, not after minutes of it.
  const noPng = options.chart && chartFormat(options.chart) === 'png' ? pngUnavailable() : null;
  if (noPng !== null) {
    process.stderr.write(`diffswap analyze: ${noPng}\n`);
    return ExitCode.failure;
  }
  let images: ReturnType<typeof openImages>;
  try {
    images = openImages(options.paths);
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    process.stderr.write(`diffswap analyze: ${error.message}\n`);
    return ExitCode.input;
  }
  for (const image of images) {
    if (image.tailBytes > 0) {
      process.stderr.write(
        `diffswap analyze: ${image.path}: size is not a multiple of 4 KiB; ` +
          `the last ${image.tailBytes} bytes are ignored\n`,
      );
    }
  }
  const progress = progressBar(
    'analyze',
    options.progress && process.stderr.isTTY === true,
    bytesDetail,
  );
  let report: AnalysisReport;
  try {
    report = await analyzeImages(images, {
      sampleSize: options.sampleSize,
      workers: options.workers,
      seed: options.seed,
      exactOnly: options.exactOnly,
      onProgress: (done, total) => progress.update(done, total),
      onStudies: () => progress.note(`sampled comparisons (${options.sampleSize} pages/pairs)...`),
    });
  } catch (error) {
    progress.done('');
    process.stderr.write(`diffswap analyze: failed: ${(error as Error).message}\n`);
    return ExitCode.failure;
  }
  progress.done('analyze: done');
  try {
    await writeOutputs(report, options);
  } catch (error) {
    process.stderr.write(`diffswap analyze: cannot write output: ${(error as Error).message}\n`);
    return ExitCode.failure;
  }
  return ExitCode.ok;
}
