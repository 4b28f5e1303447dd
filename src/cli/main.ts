#!/usr/bin/env node
/**
 * The `diffswap` command: dispatches to one module per subcommand, each exporting
 * `run(argv): Promise<number>` (the exit code). Modules load lazily so `--help` stays instant.
 */
import { version } from './version.js';

const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  serve: {
    summary: 'serve exports over NBD, with the dashboard and metrics over HTTP',
    load: () => import('./serve.js'),
  },
  stats: {
    summary: 'print what the running server stores and saves, per technique and export',
    load: () => import('./stats.js'),
  },
  analyze: {
    summary: 'measure what each technique would save on memory images',
    load: () => import('./analyze.js'),
  },
  check: {
    summary: 'verify (and with --repair, fix) a stopped store: checksums, reference counts',
    load: () => import('./check.js'),
  },
};

interface CommandModule {
  run(argv: string[]): Promise<number>;
}

export const USAGE = `diffswap ${version}: swap and memory-backing storage over NBD that stores
4 KiB pages deduplicated, delta-encoded against similar pages, and compressed.

Usage: diffswap <command> [options]

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(9)}${c.summary}`)
  .join('\n')}

Run 'diffswap <command> --help' for a command's options.
Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(USAGE);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    console.log(version);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`diffswap: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
  const module = await command.load();
  return module.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(`diffswap: ${(error as Error)?.stack ?? String(error)}`);
    process.exitCode = 1;
  },
);
