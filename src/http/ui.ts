/**
 * The dashboard's static files. The page is plain HTML, CSS and JavaScript under src/http/ui
 * (not compiled by tsc) plus uPlot from node_modules. Files are located from the package
 * root, so the same code works run from src or from dist, and read once at start: the set
 * is small and fixed, and no request path ever reaches the file system.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';

interface StaticFile {
  body: Buffer;
  type: string;
}

/** URL path -> where the file lives, relative to the UI folder or to uPlot's dist folder. */
const UI_FILES: Record<string, { from: 'ui' | 'uplot'; file: string; type: string }> = {
  '/': { from: 'ui', file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/app.js': { from: 'ui', file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/ui/style.css': { from: 'ui', file: 'style.css', type: 'text/css; charset=utf-8' },
  '/ui/favicon.svg': { from: 'ui', file: 'favicon.svg', type: 'image/svg+xml' },
  '/ui/vendor/uPlot.iife.min.js': {
    from: 'uplot',
    file: 'uPlot.iife.min.js',
    type: 'text/javascript; charset=utf-8',
  },
  '/ui/vendor/uPlot.min.css': {
    from: 'uplot',
    file: 'uPlot.min.css',
    type: 'text/css; charset=utf-8',
  },
};

/**
 * The page may load only its own files and talk only to its own server; uPlot sets element
 * styles from script (allowed under style-src 'self' because CSSOM writes are not inline
 * style attributes).
 */
const PAGE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The folder holding package.json, found by walking up from this module. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'diffswap') return dir;
    } catch {
      // No package.json here; keep walking.
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('diffswap package root not found above ' + import.meta.url);
    dir = parent;
  }
}

function loadFiles(): Map<string, StaticFile> {
  const uiDir = join(packageRoot(), 'src', 'http', 'ui');
  const uplotDir = dirname(createRequire(import.meta.url).resolve('uplot'));
  const files = new Map<string, StaticFile>();
  for (const [url, spec] of Object.entries(UI_FILES)) {
    const dir = spec.from === 'ui' ? uiDir : uplotDir;
    files.set(url, { body: readFileSync(join(dir, spec.file)), type: spec.type });
  }
  return files;
}

/** Registers the page routes. Throws at start when a file is missing (a broken install). */
export function registerUiRoutes(app: FastifyInstance) {
  const files = loadFiles();
  for (const [url, file] of files) {
    // The page and its files hold no store data; the page asks for the token itself.
    app.get(url, { config: { public: true } }, async (_request, reply) => {
      reply.header('content-type', file.type);
      reply.header('cache-control', 'no-cache');
      if (url === '/') reply.header('content-security-policy', PAGE_CSP);
      return reply.send(file.body);
    });
  }
}
