/**
 * `diffswap check [--repair]`: verifies a store that no server has open: every mapping and
 * object, payload checksums and reference counts. Damage is reported by export and page
 * offset, as text for a person or, with --json, as the report object. Exit 0 when clean (or
 * repaired), 1 when damage remains, 2 on bad usage.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config/index.js';
import { silentLogger } from '../log/index.js';
import type { CheckReport } from '../store/index.js';
import { progressBar } from './progress.js';
import { storeConfigProblems } from './store-config.js';

const USAGE = `Usage: diffswap check [--config FILE] [--data DIR] [--repair] [--json]

Walks every object and mapping of a stopped store, verifies checksums and reference counts,
and reports damage by export and page offset. --repair sets reference counts and segment
live bytes to the recount and deletes objects nothing refers to; pages whose data is lost stay
mapped and keep answering EIO (TRIM them to clear them). --json prints the report only.
Exit status: 0 consistent (or fully repaired), 1 problems or damaged pages remain, 2 usage.`;

export async function run(argv: string[]): Promise<number> {
  let values: { config?: string; data?: string; repair?: boolean; json?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        config: { type: 'string' },
        data: { type: 'string' },
        repair: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    console.error(`diffswap check: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  try {
    const overrides = values.data ? { data: values.data } : {};
    const config = loadConfig(values.config, overrides, process.env, storeConfigProblems);
    // Opening a folder without a store would create an empty one and call it healthy.
    if (!existsSync(join(config.dataDir, 'index', 'data.mdb'))) {
      console.error(`diffswap check: no page store in ${config.dataDir} (nothing to check)`);
      return 1;
    }
    const store = await import('../store/index.js');
    const opened = await store.openPageStore({
      dataDir: config.dataDir,
      exports: [...config.exports],
      logger: silentLogger(),
      tuning: { ...config.store },
    });
    try {
      const bar = progressBar(
        'check',
        process.stderr.isTTY === true,
        (done, total) =>
          `${done.toLocaleString('en-US')} of ${total.toLocaleString('en-US')} steps`,
      );
      const report = await opened
        .check({
          repair: values.repair ?? false,
          onProgress: ({ done, total }) => bar.update(done, total),
        })
        .finally(() => bar.clear());
      // Healthy, or every problem repaired and no page damaged: 0. Anything left: 1.
      const clean = report.damagedTotal === 0 && report.unrepaired === 0;
      console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
      return clean ? 0 : 1;
    } finally {
      await opened.close();
    }
  } catch (error) {
    console.error(`diffswap check: ${(error as Error).message}`);
    return error instanceof ConfigError ? 2 : 1;
  }
}

/** Lines of problems and damaged pages printed before pointing at --json for the rest. */
const LINES_SHOWN = 50;

/** The report for a person: a verdict, then what is wrong, damaged pages by export and offset. */
export function formatReport(report: CheckReport): string {
  const checked = `${report.objectsChecked} objects and ${report.mappingsChecked} mappings checked`;
  if (report.damagedTotal === 0 && report.unrepaired === 0) {
    const repaired = report.repaired > 0 ? `, ${report.repaired} problem(s) repaired` : '';
    return `store consistent: ${checked}${repaired}, no damaged page`;
  }
  // Damage left means problems listed (unrepaired) or pages listed (damagedTotal).
  const lines = [
    `store damaged: ${checked}; ${report.problems.length} problem(s), ` +
      `${report.repaired} repaired, ${report.unrepaired} left; ` +
      `${report.damagedTotal} damaged page(s) (reads answer EIO)`,
  ];
  if (report.problems.length > 0) {
    lines.push('', 'problems:');
    for (const problem of report.problems.slice(0, LINES_SHOWN)) lines.push(`  ${problem}`);
    if (report.problems.length > LINES_SHOWN) {
      lines.push(`  ... ${report.problems.length - LINES_SHOWN} more (--json lists them all)`);
    }
  }
  if (report.damaged.length > 0) {
    lines.push('', 'damaged pages:', '  export            offset (bytes)      object  problem');
    for (const page of report.damaged.slice(0, LINES_SHOWN)) {
      lines.push(
        `  ${page.export.padEnd(16)}  ${String(page.offsetBytes).padStart(14)}  ` +
          `${String(page.objectId).padStart(10)}  ${page.problem}`,
      );
    }
    if (report.damagedTotal > LINES_SHOWN) {
      lines.push(`  ... ${report.damagedTotal - LINES_SHOWN} more (--json lists those it kept)`);
    }
  }
  return lines.join('\n');
}
