// Runs the compiled test files under dist/test with node's test runner.
// Usage: node test/run.mjs [PREFIX ...]  e.g. `unit`, `integration/clients`.
// With no prefix every *.test.js runs. Files run one at a time: many start servers and
// real clients, and these machines have two cores.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('../dist/test/', import.meta.url).pathname;
const prefixes = process.argv.slice(2);

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...walk(path));
    else if (name.endsWith('.test.js')) out.push(path);
  }
  return out;
}

const files = walk(root).filter((file) => {
  const rel = relative(root, file);
  return prefixes.length === 0 || prefixes.some((p) => rel.startsWith(p));
});
if (files.length === 0) {
  console.error(`no test files match ${prefixes.join(' ') || '(all)'} under ${root}`);
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ['--enable-source-maps', '--test', '--test-concurrency=1', ...files],
  { stdio: 'inherit' },
);
process.exit(result.status ?? 1);
