/**
 * `diffswap stats`: asks a running server's HTTP API for its accounting and prints it as a
 * table (or JSON with --json). The store is owned by the server process, so the numbers come
 * from the server rather than from reading its files behind its back.
 */
import { parseArgs } from 'node:util';
import { formatSize } from '../config/size.js';
import type { StoreStats, TechniqueName } from '../device/types.js';
import type { HostSafetyReport } from '../native/host.js';

const USAGE = `Usage: diffswap stats [--http HOST:PORT] [--token TOKEN] [--json]

Prints logical and stored bytes, the saving per technique, per-export figures and the host
safety measures in effect of the server listening on --http (default 127.0.0.1:8080; token
also from DIFFSWAP_HTTP_TOKEN). --json prints the stats as the API gives them, with the host
safety report under "hostSafety".`;

const TECHNIQUES: TechniqueName[] = ['zero', 'duplicate', 'delta', 'compressed', 'raw'];

function percent(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-';
}

/** The stats as an aligned text table. */
export function formatStats(stats: StoreStats): string {
  const lines: string[] = [];
  const saving = stats.logicalBytes - stats.storedBytes;
  lines.push(`backend      ${stats.kind}`);
  lines.push(`logical      ${formatSize(stats.logicalBytes)}`);
  lines.push(
    `stored       ${formatSize(stats.storedBytes)} payload, ${formatSize(stats.diskBytes)} on ` +
      `disk (${formatSize(stats.indexBytes)} index)`,
  );
  lines.push(`saving       ${formatSize(saving)} (${percent(saving, stats.logicalBytes)})`);
  lines.push('');
  lines.push('technique     pages      objects    stored       saved');
  for (const name of TECHNIQUES) {
    const t = stats.techniques[name];
    lines.push(
      `${name.padEnd(13)} ${String(t.pages).padEnd(10)} ${String(t.objects).padEnd(10)} ` +
        `${formatSize(t.storedBytes).padEnd(12)} ${formatSize(t.savedBytes)}`,
    );
  }
  lines.push('');
  lines.push(
    `reference pages ${stats.referencePages}, deltas on them ${stats.referenceFanInTotal} ` +
      `(most on one: ${stats.referenceFanInMax})`,
  );
  lines.push(`write buffer ${stats.writeBuffer.pages}/${stats.writeBuffer.capacityPages} pages`);
  lines.push('');
  lines.push('export            size        mapped      logical     stored      saving  group');
  for (const e of stats.exports) {
    lines.push(
      `${e.name.padEnd(17)} ${formatSize(e.sizeBytes).padEnd(11)} ${String(e.mappedPages).padEnd(11)} ` +
        `${formatSize(e.logicalBytes).padEnd(11)} ${formatSize(e.storedBytes).padEnd(11)} ` +
        `${percent(e.logicalBytes - e.storedBytes, e.logicalBytes).padEnd(7)} ${e.group}`,
    );
  }
  return lines.join('\n');
}

/** One line per host safety measure: asked for or not, in effect or why not. */
export function formatHostSafety(report: HostSafetyReport): string {
  const state = (requested: boolean, inEffect: boolean, error: string | null) =>
    !requested ? 'off' : inEffect ? 'in effect' : `requested, NOT in effect: ${error ?? '?'}`;
  const { mlock, ioFlusher, oomScoreAdj } = report;
  const locked = mlock.lockedBytes === null ? '' : ` (${formatSize(mlock.lockedBytes)} locked)`;
  const oomValue = oomScoreAdj.value === null ? '' : ` (now ${oomScoreAdj.value})`;
  const oomRequested = oomScoreAdj.requested !== null;
  return [
    `mlock        ${state(mlock.requested, mlock.inEffect, mlock.error)}${locked}`,
    `io flusher   ${state(ioFlusher.requested, ioFlusher.inEffect, ioFlusher.error)}`,
    `oom score    ${state(oomRequested, oomScoreAdj.inEffect, oomScoreAdj.error)}${oomValue}`,
  ].join('\n');
}

/** GETs one API path as JSON; a message for the user when it cannot. */
async function getJson(url: string, token: string | undefined): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(url, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    throw new Error(
      `no server answers at ${url} (${(error as Error).message}); ` +
        'start one with `diffswap serve` or pass --http HOST:PORT',
    );
  }
  if (!response.ok) throw new Error(`${url} answered ${response.status}: ${await response.text()}`);
  return response.json();
}

export async function run(argv: string[]): Promise<number> {
  let values: { http?: string; token?: string; json?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        http: { type: 'string' },
        token: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    console.error(`diffswap stats: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const address = values.http ?? '127.0.0.1:8080';
  const token = values.token ?? process.env.DIFFSWAP_HTTP_TOKEN;
  const base = `http://${address}/api/v1`;
  let stats: StoreStats;
  let hostSafety: HostSafetyReport | null;
  try {
    stats = (await getJson(`${base}/stats`, token)) as StoreStats;
    const info = (await getJson(`${base}/info`, token)) as { hostSafety?: HostSafetyReport | null };
    hostSafety = info.hostSafety ?? null;
  } catch (error) {
    console.error(`diffswap stats: ${(error as Error).message}`);
    return 1;
  }
  if (values.json) console.log(JSON.stringify({ ...stats, hostSafety }, null, 2));
  else {
    console.log(formatStats(stats));
    if (hostSafety) console.log(`\n${formatHostSafety(hostSafety)}`);
  }
  return 0;
}
