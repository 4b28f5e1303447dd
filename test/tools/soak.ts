/**
 * The long soak: `node dist/test/tools/soak.js --minutes 30`. 8 fio jobs with crc32c verify
 * over 4 exports of one `diffswap serve`; prints the figures and exits 1 on any verify error
 * or when the server's RSS or descriptors grew.
 */
import { parseArgs } from 'node:util';
import { runSoak, summarizeSoak } from '../reliability/soak.js';

const { values } = parseArgs({ options: { minutes: { type: 'string', default: '30' } } });
const report = await runSoak(Number(values.minutes));
console.log(summarizeSoak(report));
process.exitCode = report.problems.length === 0 ? 0 : 1;
