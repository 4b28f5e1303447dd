/**
 * What a fuzz campaign must show, as a list of failures (empty when it passed). One place,
 * so the CI test and the long run judge by the same rules.
 */
import type { FuzzCampaignReport } from './fuzz-harness.js';
import { MiB } from './proc-stats.js';

/**
 * Server anonymous RSS allowed during a campaign (the mapped LMDB index is not counted). The NBD layer lets each connection hold at most
 * 64 MiB (bufferedBytesMax) and a campaign runs at most a few slow clients at once, plus the
 * store's caches and the runtime: above this, something grows that should not.
 */
export const FUZZ_RSS_BYTES_MAX = 768 * MiB;
/** Descriptors may not outgrow the start by more than the sessions that can be open at once. */
const FD_SLACK = 64;
/** The healthy client must never go this long without finishing a round. */
export const HEALTHY_SILENCE_MS_MAX = 20_000;

export function campaignProblems(r: FuzzCampaignReport): string[] {
  const problems: string[] = [];
  const t = r.totals;
  if (!r.serverAlive) problems.push('the server process died');
  if (r.serverFaults.length > 0) {
    problems.push(
      `server logged ${r.serverFaults.length} faults: ` +
        JSON.stringify(r.serverFaults.slice(0, 3)),
    );
  }
  if (t.violationCount > 0) problems.push(`${t.violationCount} protocol violations`);
  if (t.wrongBytes > 0) problems.push(`${t.wrongBytes} wrong bytes read back`);
  if (r.anonMaxBytes > FUZZ_RSS_BYTES_MAX) {
    problems.push(`server anonymous RSS reached ${(r.anonMaxBytes / MiB).toFixed(0)} MiB`);
  }
  if (r.fdEnd > r.fdStart + FD_SLACK) problems.push(`descriptors grew ${r.fdStart} -> ${r.fdEnd}`);
  if (r.healthyExit !== 0)
    problems.push(`healthy client exited ${r.healthyExit}: ${r.healthyOutput}`);
  if (r.healthyRounds === 0) problems.push('healthy client finished no round');
  if (r.healthyLongestStallMs > HEALTHY_SILENCE_MS_MAX) {
    problems.push(`healthy client starved for ${r.healthyLongestStallMs} ms`);
  }
  // Every refusal the generator provoked must be counted under its reason.
  for (const [reason, sent] of t.refusedByReason) {
    const counted = r.rejectedByReason.get(reason) ?? 0;
    if (counted < sent) problems.push(`reason ${reason}: sent ${sent}, server counted ${counted}`);
  }
  return problems;
}
