#!/usr/bin/env node
// The `diffswap` executable: runs the compiled CLI from dist/ (built by `npm install`).
import { existsSync } from 'node:fs';

const main = new URL('../../../dist/src/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  console.error('diffswap: not built yet; run `npm install` (or `npm run build`) in the checkout');
  process.exit(1);
}
await import(main.href);
