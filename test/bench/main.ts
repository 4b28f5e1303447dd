/**
 * `npm run bench`: runs the benchmark sections in test/bench/sections/ one after another and
 * writes every figure they record to bench-results/bench-TIMESTAMP.json (gitignored).
 *
 * Usage: node dist/test/bench/main.js [--quick] [--list] [SECTION ...]
 *   SECTION  run only these sections (by name), in the order given; default all.
 *   --quick  short runs, to check the benchmark itself works (figures not meaningful).
 *
 * Benchmarks are not tests: they assert nothing and fail only when a tool or server fails.
 * Targets (ratios against nbdkit, savings) are printed beside the figures.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { BenchContext, BenchSection } from './lib/section.js';
import { killAllServers } from './lib/servers.js';

const here = dirname(fileURLToPath(import.meta.url));
/** dist/test/bench -> repository root. */
const rootDir = join(here, '..', '..', '..');

async function loadSections(): Promise<BenchSection[]> {
  const dir = join(here, 'sections');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.js')).sort();
  const sections: BenchSection[] = [];
  for (const file of files) {
    const mod = (await import(join(dir, file))) as { section?: BenchSection };
    if (!mod.section) throw new Error(`${file} exports no 'section'`);
    sections.push(mod.section);
  }
  // The protocol section first: it is the baseline the others are read against.
  return sections.sort((a, b) => Number(b.name === 'protocol') - Number(a.name === 'protocol'));
}

function toolVersion(file: string, args: string[]): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8' }).split('\n')[0]?.trim() ?? '';
  } catch {
    return 'unavailable';
  }
}

function gitCommit(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: rootDir });
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: rootDir }).length > 0;
    return `${head.toString().trim()}${dirty ? '+dirty' : ''}`;
  } catch {
    return 'unknown';
  }
}

async function runSection(section: BenchSection, quick: boolean) {
  const tmpDir = await mkdtemp(join(tmpdir(), `diffswap-bench-${section.name}-`));
  const recorded: Record<string, unknown> = {};
  const ctx: BenchContext = {
    rootDir,
    tmpDir,
    quick,
    log: (line = '') => console.log(line),
    record: (key, value) => {
      recorded[key] = value;
    },
  };
  const startedAtMs = Date.now();
  console.log(`\n== ${section.name}: ${section.description}`);
  // Other work on the machine skews every figure; the load is printed so a reader can tell.
  const loadBefore = loadavg()[0] ?? 0;
  console.log(`load average ${loadBefore.toFixed(2)} on ${cpus().length} CPUs`);
  try {
    await section.run(ctx);
    const load = { before: loadBefore, after: loadavg()[0] ?? 0 };
    return { ok: true, elapsedS: (Date.now() - startedAtMs) / 1000, load, ...recorded };
  } catch (err) {
    console.error(`section ${section.name} failed:`, err);
    return { ok: false, error: String(err), ...recorded };
  } finally {
    await rm(tmpDir, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { quick: { type: 'boolean', default: false }, list: { type: 'boolean' } },
  });
  const sections = await loadSections();
  if (values.list) {
    for (const s of sections) console.log(`${s.name.padEnd(12)} ${s.description}`);
    return 0;
  }
  const chosen =
    positionals.length === 0
      ? sections
      : positionals.map((name) => {
          const found = sections.find((s) => s.name === name);
          if (!found)
            throw new Error(`no bench section '${name}' (have: ${sections.map((s) => s.name)})`);
          return found;
        });

  const report: Record<string, unknown> = {
    startedAt: new Date().toISOString(),
    commit: gitCommit(),
    quick: values.quick,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '', node: process.version },
    tools: { fio: toolVersion('fio', ['--version']), nbdkit: toolVersion('nbdkit', ['--version']) },
    sections: {},
  };
  const results = report.sections as Record<string, unknown>;
  let failed = 0;
  for (const section of chosen) {
    const result = await runSection(section, values.quick ?? false);
    results[section.name] = result;
    if (!result.ok) failed++;
  }

  const outDir = join(rootDir, 'bench-results');
  await mkdir(outDir, { recursive: true });
  const stamp = (report.startedAt as string).replace(/[:.]/g, '-');
  const outPath = join(outDir, `bench-${stamp}.json`);
  await writeFile(outPath, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nresults: ${outPath}`);
  return failed === 0 ? 0 : 1;
}

process.on('exit', killAllServers);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    killAllServers();
    process.exit(130);
  });
}
process.exit(await main()); // explicit: a failed start may leave a port poll pending
