import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { storeConfigProblems } from '../../src/cli/store-config.js';
import { buildConfig } from '../../src/config/index.js';

function problemsOf(store: Record<string, unknown>): string[] {
  return storeConfigProblems(store);
}

describe('the store section of the config', () => {
  it('takes the defaults and sensible values', () => {
    assert.deepEqual(problemsOf({}), []);
    assert.deepEqual(problemsOf({ batchPagesMax: 512, compressionLevel: 19 }), []);
  });

  it('lists every value out of range at once, each with its key', () => {
    const problems = problemsOf({ batchPagesMax: -1, compressionLevel: 99, similarity: 'x' });
    assert.equal(problems.length, 3, problems.join('\n'));
    assert.match(problems[0] ?? '', /^store\.batchPagesMax must be a positive integer/);
    assert.ok(problems.some((p) => /^store\.similarity must be/.test(p)));
    assert.ok(problems.some((p) => /^store\.compressionLevel .* 1 to 22 \(got 99\)/.test(p)));
  });

  it('names unknown keys and wrong types before judging values', () => {
    const problems = problemsOf({ batchPagesMax: 'x', compresionLevel: 0 });
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.ok(problems.some((p) => /did you mean 'compressionLevel'/.test(p)));
  });

  it('joins the problems of the rest of the file in one list', () => {
    const file = { nbd: { listen: 'nowhere' }, store: { batchPagesMax: 0 } };
    assert.throws(
      () => buildConfig(file, {}, {}, storeConfigProblems),
      (error: Error) =>
        /nbd\.listen/.test(error.message) && /store\.batchPagesMax/.test(error.message),
    );
    const memory = { ...file, nbd: {}, backend: 'memory' as const };
    assert.doesNotThrow(() => buildConfig(memory, {}, {}, storeConfigProblems));
  });
});
