// Tiny SVG/HTML charts: sparklines, a bar timeline and a weekday × hour heat map.
// Every chart has a text alternative (aria-label or a real table).

import { h, svg, isNum, fmtNum } from './dom.js';

const W = 200;
const H = 40;

function linePath(values, lo, hi) {
  const n = values.length;
  const x = (i) => (n === 1 ? W / 2 : 2 + (i * (W - 4)) / (n - 1));
  const y = (v) => H - 3 - ((v - lo) / (hi - lo || 1)) * (H - 6);
  // Buckets without calls have no value: the line joins the buckets that have one.
  const points = values.map((v, i) => [v, i]).filter(([v]) => isNum(v));
  if (points.length === 1) points.push([points[0][0], points[0][1] + 0.5]); // a lone value: a dash
  return points.map(([v, i], k) => `${k ? 'L' : 'M'}${x(i).toFixed(1)} ${y(v).toFixed(1)}`).join(' ');
}

/**
 * Sparkline of one or more aligned series: [{values, className}], on a shared scale.
 * `min`/`max` fix the scale (e.g. 0..1 for rates).
 */
export function sparkline(series, { label, min = null, max = null }) {
  const all = series.flatMap((s) => s.values).filter(isNum);
  const el = svg('svg', {
    class: 'spark', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': label,
  });
  if (!all.length) return el;
  const lo = min ?? Math.min(...all);
  const hi = max ?? Math.max(...all);
  for (const s of series) {
    el.append(svg('path', { class: `spark-line ${s.className || ''}`, d: linePath(s.values, lo, hi) }));
  }
  return el;
}

/** Describe a series for screen readers: range and latest value. */
export function describe(values, format) {
  const nums = values.filter(isNum);
  if (!nums.length) return 'no data';
  const latest = [...values].reverse().find(isNum);
  return `from ${format(Math.min(...nums))} to ${format(Math.max(...nums))}, latest ${format(latest)}`;
}

/** Bars over time: points [{label, value}], oldest first. */
export function barChart(points, { label, valueLabel }) {
  const max = Math.max(0, ...points.map((p) => p.value));
  const n = Math.max(points.length, 1);
  const chart = svg('svg', {
    class: 'bars', viewBox: `0 0 ${n * 10} 100`, preserveAspectRatio: 'none', role: 'img', 'aria-label': label,
  });
  points.forEach((p, i) => {
    const height = max ? (p.value / max) * 96 : 0;
    chart.append(svg('rect', { x: i * 10 + 1, y: 100 - height, width: 8, height: Math.max(height, p.value ? 1 : 0) }));
  });
  const first = points[0];
  const last = points[points.length - 1];
  return h('div', { class: 'bar-chart' },
    h('p', { class: 'bar-max small muted' }, `max ${fmtNum(max, 0)} ${valueLabel}`),
    chart,
    h('p', { class: 'bar-axis small muted' },
      h('span', null, first ? first.label : ''),
      h('span', null, last && last !== first ? last.label : '')));
}

/** Weekday × hour heat map as a table (values in each cell for assistive technology). */
export function heatMap(matrix, { caption }) {
  const values = matrix.plays;
  const max = Math.max(0, ...values.flat());
  const head = h('tr', null, h('td', { class: 'corner' }),
    matrix.hours.map((hour) => h('th', { scope: 'col', class: hour % 3 ? 'minor' : '' },
      hour % 3 ? h('span', { class: 'visually-hidden' }, `${hour}h`) : `${hour}h`)));
  const rows = matrix.weekdays.map((day, w) => h('tr', null,
    h('th', { scope: 'row' }, day.slice(0, 3)),
    matrix.hours.map((hour, i) => {
      const v = values[w][i] || 0;
      return h('td', {
        class: 'cell',
        title: `${day} ${hour}:00: ${v} plays`,
        style: { '--level': max ? (v / max).toFixed(3) : '0' },
      }, h('span', { class: 'visually-hidden' }, String(v)));
    })));
  return h('div', { class: 'scroll-x', tabindex: '0', role: 'region', 'aria-label': caption },
    h('table', { class: 'heatmap' }, h('caption', null, caption), h('thead', null, head), h('tbody', null, rows)));
}

/** A horizontal share bar list (top artists, genres). */
export function shareList(items, { label }) {
  return h('ol', { class: 'share-list', 'aria-label': label },
    items.map((item) => h('li', null,
      h('span', { class: 'share-name' }, item.name),
      h('span', { class: 'share-bar', 'aria-hidden': 'true' },
        h('span', { class: 'share-fill', style: { '--share': String(Math.min(1, item.share || 0)) } })),
      h('span', { class: 'share-value' }, item.value))));
}
