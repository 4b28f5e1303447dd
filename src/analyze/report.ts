/**
 * Renders an AnalysisReport as terminal tables (plain text, 100 columns at most) and as an
 * SVG chart drawn by hand: one bar per technique, saving in percent, sampled rows hatched.
 */
import type { AnalysisReport } from './index.js';

const MIB = 1 << 20;

function pct(value: number): string {
  return `${value.toFixed(1)}%`;
}

function fixed(value: number, digits = 0): string {
  return value.toFixed(digits);
}

/** A left-aligned first column and right-aligned others, separated by two spaces. */
function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

function classLines(report: AnalysisReport): string[] {
  const c = report.classes;
  const total = Math.max(1, report.pageCount);
  const rows: Array<[string, number]> = [
    ['zero', c.zero],
    ['same word repeated', c.sameWord],
    ['duplicate, same file', c.duplicateInFile],
    ['duplicate, across files', c.duplicateAcrossFiles],
    ['similar (stored as delta)', c.similar],
    ['unique, compressed', c.uniqueCompressed],
    ['unique, raw (incompressible)', c.uniqueRaw],
  ];
  return table(
    ['page class', 'pages', 'share'],
    rows.map(([name, count]) => [name, String(count), pct((100 * count) / total)]),
  );
}

function techniqueLines(report: AnalysisReport): string[] {
  return table(
    ['technique', 'stored MiB', 'saving', 'basis'],
    report.techniques.map((t) => [
      t.name,
      fixed(t.storedBytes / MIB, 1),
      pct(t.savingPercent),
      t.basis,
    ]),
  );
}

function studyLines(report: AnalysisReport): string[] {
  const s = report.studies;
  if (!s) return [];
  const out: string[] = [];
  out.push('', 'Compressors on sampled pages (bytes/page; raw when it would not fit)');
  out.push(
    ...table(
      ['compressor', 'pages', 'mean B', 'us/page'],
      s.compressors.map((c) => [
        c.name,
        String(c.sampledPages),
        fixed(c.meanBytes),
        fixed(c.encodeUs, 1),
      ]),
    ),
  );
  out.push(
    '',
    'Similarity detectors: pages with a candidate (all distinct pages), hit quality (sampled)',
  );
  out.push(
    ...table(
      ['detector', 'keys', 'with cand.', 'hits', 'delta B', 'alone B', 'useful', 'key us'],
      s.detectors.map((d) => [
        d.name,
        String(d.keyCount),
        pct((100 * d.pagesWithCandidate) / Math.max(1, d.pagesLooked)),
        String(d.sampledHits),
        fixed(d.meanDeltaBytes),
        fixed(d.meanAloneBytes),
        pct(100 * d.usefulShare),
        fixed(d.keyUs, 2),
      ]),
    ),
  );
  const pairCount = s.patches[0]?.sizes.count ?? 0;
  out.push(
    '',
    `Patch algorithms on the same ${pairCount} similar pairs the store would delta-encode`,
  );
  out.push(
    ...table(
      ['algorithm', 'pairs', 'mean B', 'p50', 'p90', 'p99', 'enc us', 'dec us'],
      s.patches.map((p) => [
        p.name,
        String(p.sizes.count),
        fixed(p.sizes.mean),
        String(p.sizes.p50),
        String(p.sizes.p90),
        String(p.sizes.p99),
        fixed(p.encodeUs, 1),
        fixed(p.decodeUs, 1),
      ]),
    ),
  );
  out.push('', 'BWT + move-to-front before compression and before delta (sampled)');
  out.push(
    ...table(
      ['where', 'pages', 'without B', 'with B', 'gain', 'fwd us', 'inv us'],
      s.bwt.map((b) => [
        b.name,
        String(b.sampledPages),
        fixed(b.meanBytesWithout),
        fixed(b.meanBytesWith),
        pct(b.gainPercent),
        fixed(b.forwardUs),
        fixed(b.inverseUs),
      ]),
    ),
  );
  return out;
}

/** The whole report as terminal text. */
export function renderText(report: AnalysisReport): string {
  const t = report.timing;
  const files = report.files.map(
    (f) => `  ${f.path}: ${f.format}, ${f.pageCount} pages (${fixed(f.sizeBytes / MIB, 1)} MiB)`,
  );
  const lines = [
    `diffswap analyze: ${report.pageCount} pages, ${fixed(report.rawBytes / MIB, 1)} MiB`,
    ...files,
    '',
    ...classLines(report),
    '',
    ...techniqueLines(report),
    ...studyLines(report),
    '',
    `Time: ${fixed(t.elapsedS, 1)} s (stream ${fixed(t.streamS, 1)} s at ` +
      `${fixed(t.mibPerS)} MiB/s with ${t.workers} workers, samples ${fixed(t.studyS, 1)} s)`,
    ...report.notes.map((note) => `Note: ${note}`),
  ];
  return `${lines.join('\n')}\n`;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Geometry of the chart, in SVG user units (pixels). The label column fits the longest
 * label at about 7.2 px a character (13 px sans-serif), so no label is cut off.
 */
const CHART = { plotWidth: 470, charWidth: 7.2, barHeight: 22, gap: 6, top: 56, right: 70 };

/** A horizontal bar chart of the technique table's savings. */
export function renderSvg(report: AnalysisReport): string {
  const rows = report.techniques;
  const longest = Math.max(...rows.map((row) => row.name.length), 20);
  const labelWidth = Math.ceil(longest * CHART.charWidth) + 16;
  const width = labelWidth + CHART.plotWidth + CHART.right;
  const plotWidth = CHART.plotWidth;
  const height = CHART.top + rows.length * (CHART.barHeight + CHART.gap) + 40;
  const x0 = labelWidth;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13" role="img">`,
    `<title>${escapeXml(
      `Saving per technique on ${report.pageCount} pages: ` +
        rows.map((row) => `${row.name} ${row.savingPercent.toFixed(1)}%`).join('; '),
    )}</title>`,
    '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" ' +
      'patternTransform="rotate(45)"><rect width="6" height="6" fill="#9ecae1"/>' +
      '<line x1="0" y1="0" x2="0" y2="6" stroke="#3182bd" stroke-width="2"/></pattern></defs>',
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="22" font-size="16" font-weight="bold">${escapeXml(
      `Saving per technique: ${report.pageCount} pages, ` +
        `${(report.rawBytes / MIB).toFixed(0)} MiB`,
    )}</text>`,
    '<text x="10" y="42" fill="#555">Payload bytes saved (1 - stored/raw). ' +
      'Hatched: estimated from a sample.</text>',
  ];
  for (const percent of [0, 25, 50, 75, 100]) {
    const x = x0 + (plotWidth * percent) / 100;
    parts.push(
      `<line x1="${x}" y1="${CHART.top - 6}" x2="${x}" y2="${height - 34}" stroke="#ddd"/>`,
      `<text x="${x}" y="${height - 18}" text-anchor="middle" fill="#555">${percent}%</text>`,
    );
  }
  rows.forEach((row, i) => {
    const y = CHART.top + i * (CHART.barHeight + CHART.gap);
    const saving = Math.max(0, Math.min(100, row.savingPercent));
    const width = (plotWidth * saving) / 100;
    const fill =
      row.basis === 'sampled' ? 'url(#hatch)' : row.name.startsWith('all') ? '#e6550d' : '#3182bd';
    const textY = y + CHART.barHeight / 2 + 4;
    const bar = `x="${x0}" y="${y}" width="${width.toFixed(1)}" height="${CHART.barHeight}"`;
    const valueX = (x0 + width + 6).toFixed(1);
    parts.push(
      `<text x="${x0 - 8}" y="${textY}" text-anchor="end">${escapeXml(row.name)}</text>`,
      `<rect ${bar} fill="${fill}"/>`,
      `<text x="${valueX}" y="${textY}">${row.savingPercent.toFixed(1)}%</text>`,
    );
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
