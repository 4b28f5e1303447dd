/**
 * `diffswap check [--repair]`: verifies a store that no server has open: every mapping and
 * object, payload checksums and reference counts. Damage is reported by export and page
 * offset. Exit 0 when clean (or repaired), 1 when damage remains, 2 on bad usage.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config/index.js';
import { silentLogger } from '../log/index.js';
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
      const report = await opened.check({ repair: values.repair ?? false });
      console.log(JSON.stringify(report, null, 2));
      // Healthy, or every problem repaired and no page damaged: 0. Anything left: 1.
      const clean = report.damagedTotal === 0 && report.unrepaired === 0;
      if (!values.json) {
        console.error(
          clean
            ? `diffswap check: ${report.objectsChecked} objects and ${report.mappingsChecked} ` +
                `mappings checked, ${report.repaired} repaired, no damage`
            : `diffswap check: ${report.problems.length} problem(s), ${report.repaired} ` +
                `repaired, ${report.damagedTotal} damaged page(s)`,
        );
      }
      return clean ? 0 : 1;
    } finally {
      await opened.close();
    }
  } catch (error) {
    console.error(`diffswap check: ${(error as Error).message}`);
    return error instanceof ConfigError ? 2 : 1;
  }
}
