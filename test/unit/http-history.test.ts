/**
 * The history sampler's arithmetic: the ring buffer keeps the newest samples in order, and
 * percentiles estimated from prom-client histogram deltas land in the right bucket and
 * ignore observations from before the previous reading.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import client from 'prom-client';
import { bucketQuantile, RingBuffer } from '../../src/http/history.js';

test('the ring buffer keeps the newest items, oldest first', () => {
  const ring = new RingBuffer<number>(3);
  assert.deepEqual(ring.toArray(), []);
  assert.equal(ring.last(), undefined);
  for (let i = 1; i <= 7; i++) ring.push(i);
  assert.deepEqual(ring.toArray(), [5, 6, 7]);
  assert.equal(ring.last(), 7);
  assert.equal(ring.length, 3);
  assert.throws(() => new RingBuffer(0), RangeError);
});

/** Cumulative bucket counts (bound -> count) of a prom-client histogram, as the sampler reads. */
async function buckets(h: client.Histogram): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const v of (await h.get()).values) {
    if (!v.metricName?.endsWith('_bucket')) continue;
    const le = (v.labels as { le?: string | number }).le;
    out.set(le === '+Inf' ? Infinity : Number(le), v.value);
  }
  return out;
}

test('percentiles come from the observations between two readings', async () => {
  const registry = new client.Registry();
  const h = new client.Histogram({
    name: 'h_seconds',
    help: 'h',
    buckets: [0.001, 0.01, 0.1, 1],
    registers: [registry],
  });
  // Before the first reading: slow requests that must not count.
  for (let i = 0; i < 50; i++) h.observe(0.5);
  const first = await buckets(h);
  assert.equal(bucketQuantile(first, first, 0.5), null, 'nothing between equal readings');

  for (let i = 0; i < 90; i++) h.observe(0.0005); // bucket (0, 1 ms]
  for (let i = 0; i < 10; i++) h.observe(0.05); // bucket (10 ms, 100 ms]
  const second = await buckets(h);
  const p50 = bucketQuantile(second, first, 0.5)!;
  const p99 = bucketQuantile(second, first, 0.99)!;
  assert.ok(p50 > 0 && p50 <= 0.001, `p50 ${p50}`);
  assert.ok(p99 > 0.01 && p99 <= 0.1, `p99 ${p99}`);
  // Without the earlier reading the slow requests dominate the tail.
  assert.ok(bucketQuantile(second, undefined, 0.99)! > 0.1);

  for (let i = 0; i < 5; i++) h.observe(30); // beyond the last finite bound
  const third = await buckets(h);
  assert.equal(bucketQuantile(third, second, 0.99), 1, '+Inf ranks report the largest bound');
});
