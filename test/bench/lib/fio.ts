/**
 * fio jobs for benchmarks: one job definition applied to every server under comparison, so
 * the only difference between two figures in a row is the server.
 */
import { type FioJobResult, runFio } from '../../helpers/clients.js';

export interface FioBenchJob {
  /** Label in tables and JSON, e.g. `randread qd16`. */
  label: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write' | 'randrw';
  blockBytes: number;
  iodepth: number;
  /** Bytes of the export the job touches (from offset 0). */
  regionBytes: number;
  runtimeS: number;
  rampS: number;
  /** Extra fio options (buffer_compress_percentage, dedupe_percentage, ...). */
  extra?: string[];
}

/** Runs one time-based fio job against `uri` and returns its single job result. */
export async function runFioJob(uri: string, job: FioBenchJob): Promise<FioJobResult> {
  const args = [
    `--name=${job.label.replace(/\W+/g, '_')}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.blockBytes}`,
    `--iodepth=${job.iodepth}`,
    `--size=${job.regionBytes}`,
    '--numjobs=1',
    '--time_based',
    `--runtime=${job.runtimeS}`,
    `--ramp_time=${job.rampS}`,
    '--norandommap',
    '--randrepeat=0',
    ...(job.extra ?? []),
  ];
  const timeoutMs = (job.runtimeS + job.rampS + 60) * 1000;
  const { jobs } = await runFio(args, { timeoutMs });
  const [result] = jobs;
  if (result?.error !== 0) {
    throw new Error(`fio job ${job.label} against ${uri} failed: ${JSON.stringify(result)}`);
  }
  return result;
}

/** Writes the whole region once (1 MiB sequential writes), so reads hit stored data. */
export async function prefill(uri: string, regionBytes: number, extra: string[] = []) {
  const args = [
    '--name=prefill',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=write',
    '--bs=1M',
    '--iodepth=8',
    `--size=${regionBytes}`,
    ...extra,
  ];
  await runFio(args, { timeoutMs: 300_000 });
}
