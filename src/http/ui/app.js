// diffswap dashboard: polls the JSON API (the same routes scripts use), renders the numbers
// and the history charts (uPlot). Polling stops while the tab is hidden and resumes, with an
// immediate refresh, when it is shown again. No framework, no build step: this file is
// served as is.

(() => {
  const API = '/api/v1';
  /** Time between polls. The server samples every second; two keeps the page cheap. */
  const POLL_INTERVAL_MS = 2000;
  /** A poll that takes longer than this is abandoned and the page shows "offline". */
  const POLL_TIMEOUT_MS = 8000;
  const TECHNIQUES = ['zero', 'duplicate', 'delta', 'compressed', 'raw'];
  const TECHNIQUE_LABELS = {
    zero: 'Zero',
    duplicate: 'Duplicate',
    delta: 'Delta',
    compressed: 'Compressed',
    raw: 'Raw',
  };
  const PAGE_BYTES = 4096;
  const TOKEN_KEY = 'diffswap.token';

  const state = {
    info: null,
    stats: null,
    samples: [],
    capacity: 900,
    timer: null,
    inFlight: false,
    charts: [],
    tokenWaiters: [],
  };

  const $ = (id) => document.getElementById(id);
  /** Per-technique logical bytes behind the stacked chart, for its legend values. */
  let techniqueBytes = {};

  // ---- formatting ---------------------------------------------------------------------

  const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

  function fmtBytes(n) {
    if (n == null || !Number.isFinite(n)) return '–';
    let v = Math.abs(n);
    let unit = 0;
    while (v >= 1024 && unit < BYTE_UNITS.length - 1) {
      v /= 1024;
      unit++;
    }
    const digits = unit === 0 || v >= 100 ? 0 : v >= 10 ? 1 : 2;
    return `${n < 0 ? '-' : ''}${v.toFixed(digits)} ${BYTE_UNITS[unit]}`;
  }

  function fmtRate(n) {
    return n == null ? '–' : `${fmtBytes(n)}/s`;
  }

  const countFormat = new Intl.NumberFormat('en-US');
  function fmtCount(n) {
    return n == null || !Number.isFinite(n) ? '–' : countFormat.format(Math.round(n));
  }

  function fmtCompact(n) {
    if (n == null || !Number.isFinite(n)) return '–';
    if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
    if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
    return n >= 100 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
  }

  function fmtSeconds(s) {
    if (s == null || !Number.isFinite(s)) return '–';
    // Three significant digits at most, so a p50 / p99 pair fits a card.
    if (s < 1e-3) return `${(s * 1e6).toFixed(s < 1e-4 ? 1 : 0)} µs`;
    if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : s < 0.1 ? 1 : 0)} ms`;
    return `${s.toFixed(2)} s`;
  }

  function fmtPct(ratio) {
    if (ratio == null || !Number.isFinite(ratio)) return '–';
    return `${(ratio * 100).toFixed(ratio >= 0.995 || ratio <= -1 ? 0 : 1)}%`;
  }

  function fmtAgo(ms) {
    if (ms == null) return 'never';
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function fmtUptime(s) {
    if (s < 60) return `${Math.round(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function fmtAddress(a) {
    if (a == null) return '';
    if (typeof a === 'string') return a;
    if (typeof a === 'object') {
      if (a.path) return a.path;
      if (a.host !== undefined && a.port !== undefined) {
        return String(a.host).includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
      }
      if (a.address !== undefined && a.port !== undefined) return `${a.address}:${a.port}`;
    }
    return '';
  }

  // ---- API ------------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  /** A token passed as `#token=...` moves into this tab's storage and out of the URL. */
  function adoptTokenFromFragment() {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!match) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }

  class HttpError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, init = {}) {
    const headers = { accept: 'application/json' };
    const t = token();
    if (t) headers.authorization = `Bearer ${t}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), POLL_TIMEOUT_MS);
    try {
      const res = await fetch(API + path, { ...init, headers, signal: controller.signal });
      const body = await res.json().catch(() => null);
      if (!res.ok) {
        const err = body?.error ?? { code: 'HTTP', message: res.statusText };
        throw new HttpError(res.status, err.code, err.message);
      }
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  function askForToken() {
    const dialog = $('token-dialog');
    if (!dialog.open) dialog.showModal();
    $('token-input').focus();
    return new Promise((resolve) => state.tokenWaiters.push(resolve));
  }

  function wireTokenDialog() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token-input').value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $('token-dialog').close();
      for (const resolve of state.tokenWaiters.splice(0)) resolve();
    });
  }

  // ---- charts ---------------------------------------------------------------------------

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  /** Mixes a #rrggbb colour towards another; canvas fills must be opaque to stack. */
  function tint(hex, towards, amount) {
    const parse = (h) => {
      const m = /^#?([0-9a-f]{6})$/i.exec(h);
      const v = m ? parseInt(m[1], 16) : 0xffffff;
      return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
    };
    const a = parse(hex);
    const b = parse(towards);
    const mixed = a.map((c, i) => Math.round(c * (1 - amount) + b[i] * amount));
    return `rgb(${mixed.join(',')})`;
  }

  function axisStyle() {
    return {
      stroke: cssVar('--faint'),
      grid: { stroke: cssVar('--grid'), width: 1 },
      ticks: { stroke: cssVar('--grid'), width: 1, size: 4 },
      font: '11px system-ui, sans-serif',
    };
  }

  function baseOptions(el, series, yValues, extra = {}) {
    return {
      width: Math.max(200, el.clientWidth),
      height: el.clientWidth < 480 ? 180 : 220,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.08 : 1] } },
      axes: [
        {
          ...axisStyle(),
          space: 70,
          // Whole seconds at least: samples are a second apart.
          incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
          values: (_u, ticks) => ticks.map(fmtClock),
        },
        {
          ...axisStyle(),
          size: 78,
          // Log axes pass null for ticks they leave unlabelled.
          values: (_u, ticks) => ticks.map((v) => (v == null ? '' : yValues(v))),
        },
      ],
      series: [{ label: 'Time', value: legendValue(fmtClock) }, ...series],
      ...extra,
    };
  }

  /**
   * Legend text of one series: the value under the cursor, or the latest value when the
   * cursor is elsewhere, so the legend doubles as a live readout.
   */
  function legendValue(format) {
    return (u, v, si, idx) => {
      if (idx != null) return format(v);
      const column = u.data[si];
      return format(column && column.length > 0 ? column[column.length - 1] : null);
    };
  }

  function line(label, color, format, extra = {}) {
    return {
      label,
      stroke: color,
      width: 1.75,
      points: { show: false },
      value: legendValue(format),
      ...extra,
    };
  }

  function fmtClock(seconds) {
    if (seconds == null) return '–';
    const d = new Date(seconds * 1000);
    const two = (n) => String(n).padStart(2, '0');
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }

  /** 1-2-5 steps per decade, for log-scale axes. */
  function logSplits(_u, _axis, min, max) {
    const out = [];
    if (!(min > 0) || !(max > min)) return out;
    for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= min && v <= max) out.push(v);
      }
    }
    return out;
  }

  /** Each chart: how to build its options and how to turn samples into columns. */
  const CHARTS = [
    {
      id: 'chart-techniques',
      options(el) {
        const panel = cssVar('--panel');
        const order = [...TECHNIQUES].reverse();
        const series = order.map((t) => {
          const color = cssVar(`--t-${t}`);
          return {
            label: TECHNIQUE_LABELS[t],
            stroke: color,
            width: 1,
            fill: tint(color, panel, 0.45),
            points: { show: false },
            value: (_u, _v, _si, idx) => {
              const column = techniqueBytes[t] || [];
              return fmtBytes(idx == null ? column[column.length - 1] : column[idx]);
            },
          };
        });
        series.push(line('Stored', cssVar('--text'), fmtBytes, { width: 2, dash: [6, 4] }));
        return baseOptions(el, series, fmtBytes);
      },
      data(samples) {
        const columns = [samples.map((s) => s.tMs / 1000)];
        const raw = {};
        for (const t of TECHNIQUES) raw[t] = samples.map((s) => s.techniques[t].pages * PAGE_BYTES);
        // Cumulative from the bottom of the stack (zero) up; drawn top first so each band
        // covers the one above only where it is its own technique.
        const cumulative = [];
        let running = samples.map(() => 0);
        for (const t of TECHNIQUES) {
          running = running.map((v, i) => v + raw[t][i]);
          cumulative.push(running);
        }
        columns.push(...cumulative.reverse());
        columns.push(samples.map((s) => s.storedBytes));
        techniqueBytes = raw;
        return { columns };
      },
    },
    {
      id: 'chart-capacity',
      options(el) {
        return baseOptions(
          el,
          [
            line('Logical', cssVar('--read'), fmtBytes, {
              fill: tint(cssVar('--read'), cssVar('--panel'), 0.88),
            }),
            line('Stored', cssVar('--accent'), fmtBytes, { width: 2 }),
            line('Disk', cssVar('--faint'), fmtBytes, { dash: [4, 4] }),
          ],
          fmtBytes,
        );
      },
      data: (samples) => ({
        columns: [
          samples.map((s) => s.tMs / 1000),
          samples.map((s) => s.logicalBytes),
          samples.map((s) => s.storedBytes),
          samples.map((s) => s.diskBytes),
        ],
      }),
    },
    {
      id: 'chart-throughput',
      options(el) {
        const panel = cssVar('--panel');
        return baseOptions(
          el,
          [
            line('Read', cssVar('--read'), fmtRate, { fill: tint(cssVar('--read'), panel, 0.85) }),
            line('Write', cssVar('--write'), fmtRate, {
              fill: tint(cssVar('--write'), panel, 0.85),
            }),
          ],
          fmtRate,
        );
      },
      data: (samples) => ({
        columns: [
          samples.map((s) => s.tMs / 1000),
          samples.map((s) => s.readBytesPerS),
          samples.map((s) => s.writeBytesPerS),
        ],
      }),
    },
    {
      id: 'chart-latency',
      options(el) {
        const read = cssVar('--read');
        const write = cssVar('--write');
        const opts = baseOptions(
          el,
          [
            line('Read p50', read, fmtSeconds),
            line('Read p99', read, fmtSeconds, { dash: [5, 4] }),
            line('Write p50', write, fmtSeconds),
            line('Write p99', write, fmtSeconds, { dash: [5, 4] }),
          ],
          fmtSeconds,
        );
        opts.scales.y = { distr: 3, log: 10 };
        opts.axes[1].splits = logSplits;
        return opts;
      },
      data: (samples) => ({
        columns: [
          samples.map((s) => s.tMs / 1000),
          samples.map((s) => s.readP50S),
          samples.map((s) => s.readP99S),
          samples.map((s) => s.writeP50S),
          samples.map((s) => s.writeP99S),
        ],
      }),
    },
    {
      id: 'chart-ops',
      options(el) {
        const per = (v) => (v == null ? '–' : `${fmtCompact(v)}/s`);
        return baseOptions(
          el,
          [
            line('Reads', cssVar('--read'), per),
            line('Writes', cssVar('--write'), per),
            line('Errors', cssVar('--error'), per),
          ],
          fmtCompact,
        );
      },
      data: (samples) => ({
        columns: [
          samples.map((s) => s.tMs / 1000),
          samples.map((s) => s.readOpsPerS),
          samples.map((s) => s.writeOpsPerS),
          samples.map((s) => s.errorsPerS),
        ],
      }),
    },
    {
      id: 'chart-buffer',
      options(el) {
        const opts = baseOptions(
          el,
          [
            line('Buffer fill', cssVar('--warn'), (v) => fmtPct(v == null ? null : v / 100), {
              fill: tint(cssVar('--warn'), cssVar('--panel'), 0.85),
            }),
            line('Connections', cssVar('--accent'), fmtCount, { scale: 'conn', width: 2 }),
          ],
          (v) => `${Math.round(v)}%`,
        );
        opts.scales.y = { range: [0, 100] };
        opts.scales.conn = { range: (_u, _min, max) => [0, Math.max(4, Math.ceil(max * 1.2))] };
        opts.axes.push({
          ...axisStyle(),
          scale: 'conn',
          side: 1,
          size: 40,
          grid: { show: false },
          values: (_u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : '')),
        });
        return opts;
      },
      data: (samples) => ({
        columns: [
          samples.map((s) => s.tMs / 1000),
          samples.map((s) =>
            s.bufferCapacityPages > 0 ? (100 * s.bufferPages) / s.bufferCapacityPages : 0,
          ),
          samples.map((s) => Object.values(s.connections || {}).reduce((a, b) => a + b, 0)),
        ],
      }),
    },
  ];

  function buildCharts() {
    for (const c of state.charts) c.plot.destroy();
    state.charts = [];
    if (typeof uPlot !== 'function') return;
    for (const def of CHARTS) {
      const el = $(def.id);
      const { columns } = def.data(state.samples);
      const plot = new uPlot(def.options(el), columns, el);
      state.charts.push({ def, el, plot });
    }
  }

  function updateCharts() {
    for (const c of state.charts) {
      c.plot.setData(c.def.data(state.samples).columns);
    }
  }

  function resizeCharts() {
    for (const c of state.charts) {
      const width = Math.max(200, c.el.clientWidth);
      const height = width < 480 ? 180 : 220;
      if (c.plot.width !== width || c.plot.height !== height) c.plot.setSize({ width, height });
    }
  }

  // ---- rendering ------------------------------------------------------------------------

  function setText(id, text) {
    const el = $(id);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function setWidth(id, ratio) {
    const el = $(id);
    if (el) el.style.width = `${Math.max(0, Math.min(1, ratio || 0)) * 100}%`;
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function renderServerLine() {
    const info = state.info;
    if (!info) return;
    const parts = [`v${info.version}`, info.backend, `up ${fmtUptime(info.uptimeS)}`];
    const nbd = info.nbd?.addresses.map(fmtAddress).filter(Boolean).join(', ');
    if (nbd) parts.push(`NBD ${nbd}`);
    setText('server-line', parts.join(' · '));
    setText('foot-left', `diffswap ${info.version} · ${info.backend} backend`);
  }

  function renderKpis(s) {
    const mapped = s.exports.reduce((a, e) => a + e.mappedPages, 0);
    setText('kpi-logical', fmtBytes(s.logicalBytes));
    setText('kpi-logical-sub', `${fmtCount(mapped)} pages mapped`);
    setText('kpi-stored', fmtBytes(s.storedBytes));
    setText(
      'kpi-stored-sub',
      s.diskBytes > 0 ? `${fmtBytes(s.diskBytes)} on disk` : 'payload bytes (in memory)',
    );
    setText('kpi-saving', s.logicalBytes > 0 ? fmtPct(s.savingRatio) : '–');
    setWidth('kpi-saving-bar', s.savingRatio);
    setText('kpi-saving-sub', `${fmtBytes(Math.max(0, s.savedBytes))} saved`);
    const r = s.rates;
    setText('kpi-read', r ? fmtRate(r.readBytesPerS) : '–');
    setText('kpi-write', r ? fmtRate(r.writeBytesPerS) : '–');
    setText(
      'kpi-ops',
      r ? `${fmtCompact(r.readOpsPerS)} reads/s · ${fmtCompact(r.writeOpsPerS)} writes/s` : ' ',
    );
    const pair = (a, b) => (a == null ? 'idle' : `${fmtSeconds(a)} / ${fmtSeconds(b)}`);
    setText('kpi-lat-read', r ? pair(r.readP50S, r.readP99S) : '–');
    setText('kpi-lat-write', r ? pair(r.writeP50S, r.writeP99S) : '–');
    setText('kpi-clients', fmtCount(s.connections.total));
    const busy = Object.keys(s.connections.byExport).length;
    setText('kpi-clients-sub', `on ${busy} of ${s.exports.length} exports`);
  }

  function renderTechniques(s) {
    const totalPages = TECHNIQUES.reduce((a, t) => a + s.techniques[t].pages, 0);
    const bar = $('splitbar');
    if (bar.childElementCount !== TECHNIQUES.length) {
      bar.replaceChildren(
        ...TECHNIQUES.map((t) => {
          const span = document.createElement('span');
          span.style.background = `var(--t-${t})`;
          span.title = TECHNIQUE_LABELS[t];
          return span;
        }),
      );
    }
    TECHNIQUES.forEach((t, i) => {
      const share = totalPages > 0 ? s.techniques[t].pages / totalPages : 0;
      bar.children[i].style.flexBasis = `${share * 100}%`;
    });
    const rows = TECHNIQUES.map((t) => {
      const x = s.techniques[t];
      const tr = document.createElement('tr');
      const name = document.createElement('td');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = `var(--t-${t})`;
      name.append(swatch, TECHNIQUE_LABELS[t]);
      tr.append(
        name,
        cell(fmtCount(x.pages), 'num'),
        cell(fmtCount(x.objects), 'num'),
        cell(fmtBytes(x.pages * PAGE_BYTES), 'num'),
        cell(fmtBytes(x.storedBytes), 'num'),
        cell(fmtBytes(x.savedBytes), 'num'),
        cell(totalPages > 0 ? fmtPct(x.pages / totalPages) : '–', 'num'),
      );
      return tr;
    });
    $('technique-table').tBodies[0].replaceChildren(...rows);
  }

  function renderTrio(s) {
    setText('ref-pages', fmtCount(s.referencePages));
    setText('ref-fanin', fmtCount(s.referenceFanInTotal));
    setText('ref-max', fmtCount(s.referenceFanInMax));
    const wb = s.writeBuffer;
    const fill = wb.capacityPages > 0 ? wb.pages / wb.capacityPages : 0;
    setText('buf-fill', wb.capacityPages > 0 ? fmtPct(fill) : 'n/a');
    setWidth('buf-bar', fill);
    setText('buf-pages', wb.capacityPages > 0 ? fmtCount(wb.pages) : '–');
    setText('buf-capacity', wb.capacityPages > 0 ? `${fmtCount(wb.capacityPages)} pages` : 'none');
    setText('disk-total', s.kind === 'memory' ? 'in memory' : fmtBytes(s.diskBytes));
    setText('disk-segments', fmtBytes(Math.max(0, s.diskBytes - s.indexBytes)));
    setText('disk-index', fmtBytes(s.indexBytes));
    setText('disk-ratio', s.logicalBytes > 0 ? fmtPct(s.diskBytes / s.logicalBytes) : '–');
    const c = s.compaction;
    const badge = $('compact-state');
    badge.dataset.state = c.running ? 'running' : 'idle';
    setText('compact-state', c.running ? 'Running' : 'Idle');
    setText('compact-garbage', fmtBytes(c.garbageBytes));
    setText('compact-segments', fmtCount(c.segments));
    setText('compact-reclaimed', fmtBytes(c.reclaimedBytesTotal));
    setText('compact-last', fmtAgo(c.lastRunAtMs));
    const button = $('compact-button');
    const supported = Boolean(state.info?.capabilities.compact);
    button.hidden = !supported;
    button.disabled = c.running;
    if (!supported) setText('compact-note', 'not offered by this backend');
  }

  function renderExports(s) {
    const body = $('export-table').tBodies[0];
    if (s.exports.length === 0) {
      const td = cell('No exports configured', 'empty');
      td.colSpan = 9;
      const tr = document.createElement('tr');
      tr.append(td);
      body.replaceChildren(tr);
      return;
    }
    const rows = s.exports.map((e) => {
      const tr = document.createElement('tr');
      const name = cell(e.name, 'name');
      if (e.description) {
        const desc = document.createElement('span');
        desc.className = 'desc';
        desc.textContent = e.description + (e.readOnly ? ' · read-only' : '');
        name.append(desc);
      }
      const group = document.createElement('td');
      const pill = document.createElement('span');
      pill.className = 'pill';
      pill.textContent = e.group;
      group.append(pill);
      const saving = document.createElement('td');
      const wrap = document.createElement('div');
      wrap.className = 'saving-cell';
      const meter = document.createElement('div');
      meter.className = 'meter';
      const fill = document.createElement('span');
      fill.style.width = `${Math.max(0, Math.min(1, e.savingRatio)) * 100}%`;
      meter.append(fill);
      const pct = document.createElement('b');
      pct.textContent = e.logicalBytes > 0 ? fmtPct(e.savingRatio) : '–';
      wrap.append(meter, pct);
      saving.append(wrap);
      const errors = e.recentErrors.windowCount;
      tr.append(
        name,
        group,
        cell(fmtBytes(e.sizeBytes), 'num'),
        cell(fmtCount(e.mappedPages), 'num'),
        cell(fmtBytes(e.logicalBytes), 'num'),
        cell(fmtBytes(e.storedBytes), 'num'),
        saving,
        cell(fmtCount(e.clients), 'num'),
        cell(fmtCount(errors), errors > 0 ? 'num errors-nonzero' : 'num'),
      );
      return tr;
    });
    body.replaceChildren(...rows);
    const groups = new Set(s.exports.map((e) => e.group)).size;
    const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
    setText(
      'exports-note',
      `${plural(s.exports.length, 'export')} in ${plural(groups, 'sharing group')}`,
    );
  }

  function render() {
    const s = state.stats;
    if (!s) return;
    renderServerLine();
    renderKpis(s);
    renderTechniques(s);
    renderTrio(s);
    renderExports(s);
  }

  function setStatus(kind, text) {
    const el = $('status');
    el.dataset.state = kind;
    setText('status-text', text);
  }

  // ---- polling --------------------------------------------------------------------------

  function mergeSamples(fresh) {
    if (fresh.length === 0) return;
    state.samples.push(...fresh);
    const excess = state.samples.length - state.capacity;
    if (excess > 0) state.samples.splice(0, excess);
  }

  async function poll() {
    if (state.inFlight) return;
    state.inFlight = true;
    try {
      if (!state.info) {
        state.info = await api('/info');
        state.capacity = state.info.history.capacity || state.capacity;
      }
      const last = state.samples[state.samples.length - 1];
      const query = last ? `?sinceMs=${last.tMs}` : '';
      const [stats, history, info] = await Promise.all([
        api('/stats'),
        api(`/history${query}`),
        api('/info'),
      ]);
      state.info = info;
      state.stats = stats;
      mergeSamples(history.samples);
      render();
      updateCharts();
      setStatus('live', 'Live');
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) {
        setStatus('offline', 'Token needed');
        await askForToken();
        state.inFlight = false;
        return poll();
      }
      setStatus('offline', 'Offline');
    } finally {
      state.inFlight = false;
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = null;
    if (document.hidden) {
      setStatus('paused', 'Paused');
      return;
    }
    state.timer = setInterval(poll, POLL_INTERVAL_MS);
  }

  async function compactNow() {
    const button = $('compact-button');
    button.disabled = true;
    setText('compact-note', 'starting…');
    try {
      await api('/compaction', { method: 'POST' });
      setText('compact-note', 'compaction started');
    } catch (err) {
      setText('compact-note', err.message || 'failed');
    }
    poll();
  }

  function start() {
    adoptTokenFromFragment();
    wireTokenDialog();
    buildCharts();
    $('compact-button').addEventListener('click', compactNow);
    document.addEventListener('visibilitychange', () => {
      schedule();
      if (!document.hidden) poll();
    });
    const scheme = window.matchMedia('(prefers-color-scheme: dark)');
    scheme.addEventListener('change', () => buildCharts());
    new ResizeObserver(() => resizeCharts()).observe(document.querySelector('main'));
    schedule();
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
