/**
 * Long store operations started over HTTP (compaction, check). One run of each at a time; a
 * second request while one runs is refused with BUSY rather than queued, so a retrying
 * client cannot pile up work. The last outcome is kept for the status route.
 */
import type { Logger } from '../log/index.js';
import { ApiError } from './errors.js';

export interface JobStatus {
  supported: boolean;
  running: boolean;
  startedAtMs: number | null;
  finishedAtMs: number | null;
  result?: unknown;
  error: string | null;
  /** How far the running (or last) run came, for jobs that report it (check). */
  progress: JobProgress | null;
}

export interface JobProgress {
  done: number;
  total: number;
}

/** A job's body: its argument, and a callback for the progress it reports (if any). */
export type JobRun<A> = (arg: A, onProgress: (progress: JobProgress) => void) => Promise<unknown>;

export class StoreJob<A> {
  readonly name: string;
  readonly #run: JobRun<A> | undefined;
  readonly #logger: Logger;
  #running: Promise<unknown> | null = null;
  #startedAtMs: number | null = null;
  #finishedAtMs: number | null = null;
  #result: unknown;
  #error: string | null = null;
  #progress: JobProgress | null = null;

  constructor(name: string, run: JobRun<A> | undefined, logger: Logger) {
    this.name = name;
    this.#run = run;
    this.#logger = logger;
  }

  get supported(): boolean {
    return this.#run !== undefined;
  }

  status(): JobStatus {
    const status: JobStatus = {
      supported: this.supported,
      running: this.#running !== null,
      startedAtMs: this.#startedAtMs,
      finishedAtMs: this.#finishedAtMs,
      error: this.#error,
      progress: this.#progress,
    };
    if (this.#result !== undefined) status.result = this.#result;
    return status;
  }

  /**
   * Starts a run; the promise settles when it ends and never rejects (the outcome is in
   * status()). Throws NOT_SUPPORTED or BUSY synchronously.
   */
  start(arg: A): Promise<void> {
    const run = this.#run;
    if (!run) throw new ApiError('NOT_SUPPORTED', `this store does not offer ${this.name}`);
    if (this.#running) throw new ApiError('BUSY', `a ${this.name} is already running`);
    this.#startedAtMs = Date.now();
    this.#finishedAtMs = null;
    this.#progress = null;
    this.#logger.info({ job: this.name }, 'job started over HTTP');
    const onProgress = (progress: JobProgress) => {
      this.#progress = { done: progress.done, total: progress.total };
    };
    const running = run(arg, onProgress).then(
      (result) => {
        this.#result = result ?? null;
        this.#error = null;
        this.#logger.info({ job: this.name }, 'job finished');
      },
      (err: unknown) => {
        this.#result = undefined;
        this.#error = err instanceof Error ? err.message : String(err);
        this.#logger.error({ err, job: this.name }, 'job failed');
      },
    );
    this.#running = running;
    return running.finally(() => {
      this.#running = null;
      this.#finishedAtMs = Date.now();
    });
  }

  /** Resolves when a running job ends (at once when none runs); for close. */
  async settled(): Promise<void> {
    await this.#running?.catch(() => {});
  }
}
