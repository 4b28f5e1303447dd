/**
 * `diffswap analyze` speed and answers on real process memory: the default report (all
 * cores, sampled comparisons included) over an image made of node and python processes'
 * readable memory. Target (issue 4): at least 1 GiB per minute on these 2-core machines.
 *
 * Run alone: `node dist/test/bench/sections/analyze.js`.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { analyzeImages, openImages } from '../../../src/analyze/index.js';
import { renderText } from '../../../src/analyze/report.js';
import { readProcessPages } from '../../helpers/process-memory.js';
import type { BenchContext, BenchSection } from '../lib/section.js';

/** Goal of issue 4, in GiB per minute, for the default report. */
const TARGET_GIB_PER_MIN = 1;
/** Memory read per process: bounds the image (and the run) on big machines. */
const PROCESS_BYTES_MAX = 256 << 20;

/** Processes whose memory makes the image: two runtimes, different heaps. */
const PROCESSES: Array<[string, string[]]> = [
  [
    process.execPath,
    [
      '-e',
      "const a=[];for(let i=0;i<300000;i++)a.push({i,s:'item-'+i,t:[i%3,i%5]});" +
        "process.stdout.write('ready\\n');setInterval(()=>a.length,1000)",
    ],
  ],
  [
    'python3',
    [
      '-c',
      'import time\nd=[{"k":i,"v":str(i)*3} for i in range(200000)]\n' +
        'print("ready",flush=True)\ntime.sleep(300)',
    ],
  ],
];

/** Reads each process's readable memory into one image file; returns its path. */
async function makeImage(dir: string, quick: boolean): Promise<string> {
  const parts: Buffer[] = [];
  for (const [command, args] of PROCESSES) {
    const child = spawn(command, args, {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await once(child.stdout!, 'data');
      const bytesMax = quick ? 16 << 20 : PROCESS_BYTES_MAX;
      parts.push(readProcessPages(child.pid!, { anonOnly: false, bytesMax }));
    } finally {
      child.kill('SIGKILL');
    }
  }
  const path = join(dir, 'processes.img');
  await writeFile(path, Buffer.concat(parts));
  return path;
}

async function measure(dir: string, quick: boolean, log: (line: string) => void) {
  const image = await makeImage(dir, quick);
  const cpuBefore = process.cpuUsage();
  const report = await analyzeImages(openImages([image]), {});
  const cpu = process.cpuUsage(cpuBefore);
  log(renderText(report));
  const gib = report.rawBytes / 2 ** 30;
  const gibPerMin = gib / (report.timing.elapsedS / 60);
  const cpuS = (cpu.user + cpu.system) / 1e6;
  log(
    `analyze speed: ${gibPerMin.toFixed(2)} GiB/min wall (target >= ${TARGET_GIB_PER_MIN}), ` +
      `${cpuS.toFixed(1)} s CPU for ${gib.toFixed(2)} GiB`,
  );
  return { report, gibPerMin, cpuS };
}

export const section: BenchSection = {
  name: 'analyze',
  description: 'diffswap analyze: default report speed and savings on real process memory',
  async run(ctx: BenchContext) {
    const { report, gibPerMin, cpuS } = await measure(ctx.tmpDir, ctx.quick, (l) => ctx.log(l));
    ctx.record('gibPerMin', gibPerMin);
    ctx.record('cpuS', cpuS);
    ctx.record('techniques', report.techniques);
    ctx.record('classes', report.classes);
    ctx.record('timing', report.timing);
  },
};

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const dir = await mkdtemp(join(tmpdir(), 'diffswap-bench-analyze-'));
  try {
    await measure(dir, false, (line) => console.log(line));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
