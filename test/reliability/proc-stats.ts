/**
 * Resource figures of a running process from /proc: resident memory and open descriptors.
 * Sampled by the fuzz and soak runs to show both stay bounded (or flat) under load.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * Resident memory of `pid` in bytes, or null when the process is gone: `rss` is VmRSS (all
 * resident pages), `anon` is RssAnon (heap, buffers: what a leak grows). The difference is
 * mostly LMDB's memory-mapped index file, which grows with the data stored, and which the
 * kernel can drop at will, so flatness is judged on `anon`.
 */
export function residentBytes(pid: number): { rss: number; anon: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name: string) => {
      const match = new RegExp(`^${name}:\\s+(\\d+)\\s+kB$`, 'm').exec(status);
      return match ? Number(match[1]) * 1024 : null;
    };
    const rss = field('VmRSS');
    const anon = field('RssAnon');
    return rss === null || anon === null ? null : { rss, anon };
  } catch {
    return null;
  }
}

/** Open file descriptors of `pid`, or null when the process is gone. */
export function openFdCount(pid: number): number | null {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/**
 * Descriptors of `pid` open on page-store segment files, or null when the process is gone.
 * Their number follows the segments the store holds (up to its openSegmentsMax), so it may
 * rise with the data; every other descriptor must stay flat.
 */
export function segmentFdCount(pid: number): number | null {
  try {
    let count = 0;
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (/\/segments\/seg-\d+\.dat$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`))) count++;
      } catch {
        // Closed between the listing and the readlink: not open any more.
      }
    }
    return count;
  } catch {
    return null;
  }
}

export interface ProcSample {
  atMs: number;
  rssBytes: number;
  anonBytes: number;
  fdCount: number;
  /** Of fdCount, those open on segment files. */
  segmentFdCount: number;
}

/**
 * Samples a process every `intervalMs` until stopped; `stop()` returns the samples. Bounded:
 * at most `samplesMax` are kept (older ones thinned out), so a long soak cannot grow it.
 */
export function sampleProcess(pid: number, intervalMs: number, samplesMax = 4_096) {
  const samples: ProcSample[] = [];
  const startedAtMs = Date.now();
  const take = () => {
    const resident = residentBytes(pid);
    const fds = openFdCount(pid);
    const segmentFds = segmentFdCount(pid);
    if (resident === null || fds === null || segmentFds === null) return;
    samples.push({
      atMs: Date.now() - startedAtMs,
      rssBytes: resident.rss,
      anonBytes: resident.anon,
      fdCount: fds,
      segmentFdCount: segmentFds,
    });
    if (samples.length > samplesMax) {
      // Keep every other sample of the older half: resolution drops, the shape stays.
      const half = samples.splice(0, Math.floor(samples.length / 2));
      samples.unshift(...half.filter((_, i) => i % 2 === 0));
    }
  };
  take();
  const timer = setInterval(take, intervalMs);
  return {
    samples,
    stop(): ProcSample[] {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

export const MiB = 1024 * 1024;

/** "123.4 MiB" for reports. */
export function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}
