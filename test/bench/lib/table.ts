/**
 * Plain-text tables for benchmark reports: left-aligned text columns, right-aligned numbers,
 * and number formatting that keeps figures comparable down a column.
 */

export type Cell = string | number | null;

/** Renders rows under a header; numbers right-aligned, `null` shown as `-`. */
export function formatTable(header: string[], rows: Cell[][]): string {
  const text = rows.map((row) => row.map(formatCell));
  const widths = header.map((h, i) => Math.max(h.length, ...text.map((r) => (r[i] ?? '').length)));
  const numeric = header.map((_, i) => rows.every((r) => typeof r[i] !== 'string'));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...text.map(line)].join('\n');
}

function formatCell(cell: Cell): string {
  if (cell === null) return '-';
  if (typeof cell === 'string') return cell;
  return formatNumber(cell);
}

/** Three significant figures for small numbers, thousands grouped for large ones. */
export function formatNumber(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString('en-US');
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** The median of a non-empty list (mean of the middle two for even lengths). */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  if (sorted.length === 0) return Number.NaN;
  if (sorted.length % 2 === 1) return sorted[mid] ?? Number.NaN;
  return ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}
