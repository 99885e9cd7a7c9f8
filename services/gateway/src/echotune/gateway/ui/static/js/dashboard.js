// The dashboard: live provider health, provider analytics with sparklines, listening patterns,
// plays over time and engagement. Analytics answers are {"data", "meta"} envelopes; when the
// analytics service is unreachable the sections say so and show no figures.

import { $, h, fmtMs, fmtNum, fmtPct, isNum } from './dom.js';
import { api } from './api.js';
import { sparkline, describe, barChart, heatMap, shareList } from './charts.js';

const SERIES_BUCKET = { '1h': '5m', '24h': '1h', '7d': '1h', '30d': '1d' };
const WINDOW_TEXT = { '1h': 'last hour', '24h': 'last 24 hours', '7d': 'last 7 days', '30d': 'last 30 days' };
const GRANULARITY = { '7d': 'day', '30d': 'day', '90d': 'day', '365d': 'week', all: 'week' };
const TIMELINE_LIMIT = 200;

const timeZone = () => Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
const q = (params) => new URLSearchParams(params).toString();

/** The start of the local bucket containing `date` (weeks start on Monday, as the API's). */
function bucketStart(date, granularity) {
  const d = new Date(date);
  if (granularity === 'hour') d.setMinutes(0, 0, 0);
  else d.setHours(0, 0, 0, 0);
  if (granularity === 'week') d.setDate(d.getDate() - ((d.getDay() + 6) % 7));
  return d;
}

function nextBucket(date, granularity) {
  const d = new Date(date);
  if (granularity === 'hour') d.setHours(d.getHours() + 1);
  else d.setDate(d.getDate() + (granularity === 'week' ? 7 : 1));
  return d;
}

/** The API leaves empty buckets out: put them back as zeros over the window, so that time is
 * drawn evenly. Buckets are in the browser's time zone (the one asked for). If the buckets do
 * not line up with the answer's (another zone), the answer is drawn as it is. */
function fillGaps(points, granularity, windowMeta) {
  if (!points.length) return points;
  const byTime = new Map(points.map((p) => [new Date(p.start).getTime(), p]));
  const first = new Date(points[0].start);
  const from = windowMeta && windowMeta.window ? new Date(windowMeta.from) : first;
  const last = new Date(points[points.length - 1].start).getTime() + 1;
  const to = windowMeta && windowMeta.to ? new Date(Math.max(new Date(windowMeta.to).getTime(), last)) : new Date(last);
  const filled = [];
  let matched = 0;
  for (let t = bucketStart(from < first ? from : first, granularity); t < to && filled.length < 5000;
    t = nextBucket(t, granularity)) {
    const point = byTime.get(t.getTime());
    if (point) matched += 1;
    filled.push(point || { start: t.toISOString(), plays: 0 });
  }
  return matched === points.length ? filled : points;
}

/** Section states: loading, ok, empty, unavailable, error. */
class Section {
  constructor(name) {
    this.status = $(`#dash-${name}-status`);
    this.body = $(`#dash-${name}`);
    this.root = this.body.closest('section');
  }

  set(state, text = '') {
    this.root.dataset.state = state;
    this.status.dataset.state = state;
    if (this.status.textContent !== text) this.status.textContent = text;
    if (state !== 'ok') this.body.replaceChildren();
    this.root.setAttribute('aria-busy', String(state === 'loading'));
  }

  fail(error) {
    if (error.status === 401) return;
    if (error.unavailable) {
      const how = error.status ? `HTTP ${error.status}` : 'no answer';
      const why = error.message ? `: ${error.message.replace(/\.$/, '')}` : '';
      this.set('unavailable', `Analytics unavailable (${how}${why}). No figures are shown.`);
    } else {
      this.set('error', `These figures could not be loaded: ${error.message}`);
    }
  }
}

function figure(title, value, chart) {
  return h('figure', { class: 'spark-figure' },
    h('figcaption', null, h('span', null, title), h('span', { class: 'spark-value' }, value)), chart);
}

function latest(values) {
  return [...(values || [])].reverse().find(isNum);
}

export class Dashboard {
  constructor(app) {
    this.app = app;
    this.windowSelect = $('#dash-window');
    this.listenSelect = $('#dash-listen-window');
    this.sections = {
      providers: new Section('providers'),
      patterns: new Section('patterns'),
      timeline: new Section('timeline'),
      engagement: new Section('engagement'),
    };
    this.live = $('#dash-live');
    this.liveStatus = $('#dash-live-status');
    $('#dash-controls').addEventListener('submit', (event) => {
      event.preventDefault();
      this.load();
    });
    this.windowSelect.addEventListener('change', () => this.loadProviders());
    this.listenSelect.addEventListener('change', () => this.loadListening());
    app.providers.subscribe((providers) => this.renderLive(providers));
    this.generation = 0;
    this.listenGeneration = 0;
  }

  load() {
    return Promise.all([this.loadProviders(), this.loadListening()]);
  }

  // --- live health (gateway, not analytics) ---------------------------------------------

  renderLive(providers) {
    if (!this.app.visible('dashboard')) return;
    const entries = providers.entries();
    this.live.replaceChildren(...entries.map((e) => {
      const live = e.live;
      const parts = live
        ? [`p50 ${fmtMs(live.latency_p50_ms)}`, `p95 ${fmtMs(live.latency_p95_ms)}`,
          `success ${fmtPct(live.success_rate)}`, `${live.requests} calls`]
        : ['no live figures'];
      const state = e.breaker && e.breaker.state === 'open' ? 'unavailable (breaker open)' : e.status;
      return h('li', { class: 'live-item', dataset: { provider: e.id, health: e.breaker && e.breaker.state === 'open' ? 'unavailable' : e.status } },
        h('span', { class: 'chip-dot', 'aria-hidden': 'true' }),
        h('span', { class: 'live-name' }, e.id),
        h('span', { class: 'live-model muted' }, e.model),
        h('span', { class: 'live-state' }, state),
        h('span', { class: 'live-figures' }, parts.join(' · ')));
    }));
    const message = providers.healthError ? `Live health unavailable: ${providers.healthError.message}` : '';
    if (this.liveStatus.textContent !== message) this.liveStatus.textContent = message;
  }

  // --- provider analytics ---------------------------------------------------------------

  async loadProviders() {
    const section = this.sections.providers;
    const window = this.windowSelect.value;
    const generation = ++this.generation;
    section.set('loading', 'Loading provider analytics…');
    let summary;
    try {
      summary = await api(`/api/analytics/providers?${q({ window, limit: 100 })}`);
    } catch (error) {
      if (generation === this.generation) section.fail(error);
      return;
    }
    const rows = (summary.data && summary.data.rows) || [];
    const byProvider = new Map();
    for (const row of rows) {
      if (!byProvider.has(row.provider)) byProvider.set(row.provider, []);
      byProvider.get(row.provider).push(row);
    }
    const names = [...byProvider.keys()];
    const series = await Promise.allSettled(names.map((provider) => api(
      `/api/analytics/providers/timeseries?${q({ bucket: SERIES_BUCKET[window], window, provider })}`,
    )));
    if (generation !== this.generation) return;
    if (!rows.length) {
      section.set('empty', `No provider calls in the ${WINDOW_TEXT[window]}.`);
      return;
    }
    section.set('ok', '');
    section.body.replaceChildren(...names.map((name, i) => {
      const result = series[i];
      const data = result.status === 'fulfilled' ? result.value.data : null;
      return this.providerCard(name, byProvider.get(name), data, window, result.status === 'rejected' ? result.reason : null);
    }));
  }

  providerCard(name, rows, seriesData, window, seriesError) {
    const span = WINDOW_TEXT[window];
    const s = seriesData && seriesData.series && seriesData.series[0];
    let charts;
    if (s) {
      const bucket = seriesData.bucket;
      charts = h('div', { class: 'spark-row' },
        figure('Latency p50/p95', `${fmtMs(latest(s.p50))} / ${fmtMs(latest(s.p95))}`,
          sparkline([{ values: s.p95 || [], className: 'p95' }, { values: s.p50 || [], className: 'p50' }], {
            label: `Latency of ${name} per ${bucket} over the ${span}: p50 ${describe(s.p50 || [], fmtMs)}; p95 ${describe(s.p95 || [], fmtMs)}`,
            min: 0,
          })),
        figure('Success rate', fmtPct(latest(s.success_rate)),
          sparkline([{ values: s.success_rate || [], className: 'rate' }], {
            label: `Success rate of ${name} per ${bucket} over the ${span}: ${describe(s.success_rate || [], fmtPct)}`,
            min: 0, max: 1,
          })));
    } else {
      const why = seriesError && seriesError.unavailable ? 'analytics unavailable' : 'could not be loaded';
      charts = h('p', { class: 'muted small' }, `Time series ${why}.`);
    }
    const table = h('div', { class: 'scroll-x', tabindex: '0', role: 'region', 'aria-label': `${name} figures per model` },
      h('table', { class: 'figures' },
        h('thead', null, h('tr', null, ['Model', 'Calls', 'Success', 'p50', 'p95', 'TTFT p50', 'Tokens/s']
          .map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, rows.map((r) => h('tr', null,
          h('th', { scope: 'row' }, r.model),
          h('td', null, fmtNum(r.requests, 0)),
          h('td', null, fmtPct(r.success_rate)),
          h('td', null, fmtMs(r.latency_ms && r.latency_ms.p50)),
          h('td', null, fmtMs(r.latency_ms && r.latency_ms.p95)),
          h('td', null, fmtMs(r.ttft_ms && r.ttft_ms.p50)),
          h('td', null, fmtNum(r.tokens_per_s)))))));
    return h('article', { class: 'provider-card', dataset: { provider: name } },
      h('h3', null, name), charts, table);
  }

  // --- listening patterns, plays over time, engagement ------------------------------------

  async loadListening() {
    const { patterns, timeline, engagement } = this.sections;
    const window = this.listenSelect.value;
    const tz = timeZone();
    const granularity = GRANULARITY[window];
    patterns.set('loading', 'Loading listening patterns…');
    timeline.set('loading', 'Loading plays…');
    engagement.set('loading', 'Loading engagement…');
    const base = { tz, window };
    const generation = ++this.listenGeneration;
    const [listening, insights] = await Promise.allSettled([
      api(`/api/analytics/listening-patterns?${q({ ...base, granularity, limit: TIMELINE_LIMIT })}`),
      api(`/api/insights/engagement?${q({ ...base, limit: 10 })}`),
    ]);
    if (generation !== this.listenGeneration) return; // a newer period was chosen meanwhile
    if (listening.status === 'rejected') {
      patterns.fail(listening.reason);
      timeline.fail(listening.reason);
    } else {
      const data = listening.value.data || {};
      this.renderPatterns(data, tz);
      await this.renderTimeline(data, listening.value.meta || {}, { ...base, granularity }, window, generation);
    }
    if (insights.status === 'rejected') engagement.fail(insights.reason);
    else this.renderEngagement(insights.value.data || {});
  }

  renderPatterns(data, tz) {
    const section = this.sections.patterns;
    const totals = data.totals || {};
    if (!data.matrix || !totals.plays) {
      section.set('empty', 'No plays in this period.');
      return;
    }
    section.set('ok', '');
    const byHour = data.by_hour || [];
    const peak = byHour.reduce((best, x) => (x.plays > (best ? best.plays : -1) ? x : best), null);
    section.body.replaceChildren(
      h('p', { class: 'small' },
        `${fmtNum(totals.plays, 0)} plays, ${fmtNum(totals.unique_tracks, 0)} distinct tracks, `
        + `${fmtNum((totals.minutes || 0) / 60)} hours listened.`
        + (peak ? ` Busiest hour: ${peak.hour}:00.` : '')),
      heatMap(data.matrix, { caption: `Plays by weekday and hour (${tz})` }),
    );
  }

  async renderTimeline(data, meta, params, window, generation) {
    const section = this.sections.timeline;
    let points = data.timeline || [];
    const total = typeof meta.total === 'number' ? meta.total : points.length;
    if (total > points.length) {
      // Oldest first and paginated: fetch the most recent pages instead.
      const last = Math.ceil(total / TIMELINE_LIMIT);
      const pages = last > 1 ? [last - 1, last] : [last];
      try {
        const answers = await Promise.all(pages.map((page) => api(
          `/api/analytics/listening-patterns?${q({ ...params, fields: 'timeline', limit: TIMELINE_LIMIT, page })}`,
        )));
        points = answers.flatMap((a) => (a.data && a.data.timeline) || []).slice(-TIMELINE_LIMIT);
      } catch (error) {
        if (generation === this.listenGeneration) section.fail(error);
        return;
      }
      if (generation !== this.listenGeneration) return;
    }
    if (!points.length) {
      section.set('empty', 'No plays in this period.');
      return;
    }
    section.set('ok', '');
    const granularity = params.granularity;
    points = fillGaps(points, granularity, window === 'all' ? null : meta.window);
    const dateFormat = new Intl.DateTimeFormat(undefined, granularity === 'hour'
      ? { month: 'short', day: 'numeric', hour: '2-digit' } : { year: 'numeric', month: 'short', day: 'numeric' });
    const label = (p) => dateFormat.format(new Date(p.start));
    const sum = points.reduce((n, p) => n + p.plays, 0);
    section.body.replaceChildren(barChart(
      points.map((p) => ({ label: label(p), value: p.plays })),
      {
        label: `Plays per ${granularity} from ${label(points[0])} to ${label(points[points.length - 1])}: `
          + `${fmtNum(sum, 0)} plays, at most ${fmtNum(Math.max(...points.map((p) => p.plays)), 0)} per ${granularity}.`
          + (window === 'all' && total > points.length ? ' Most recent part shown.' : ''),
        valueLabel: `plays per ${granularity}`,
      },
    ));
  }

  renderEngagement(data) {
    const section = this.sections.engagement;
    const k = data.kpis;
    if (!k || !k.plays) {
      section.set('empty', 'No plays in this period.');
      return;
    }
    section.set('ok', '');
    const kpi = (label, value) => h('div', { class: 'kpi' }, h('dt', null, label), h('dd', null, value));
    const artists = (data.top_artists || []).map((a) => ({
      name: a.name || a.artist_id, share: a.share, value: `${fmtNum(a.plays, 0)} plays · ${fmtPct(a.share)}`,
    }));
    const genres = (data.top_genres || []).map((g) => ({
      name: g.genre, share: g.share, value: `${fmtNum(g.plays, 0)} plays · ${fmtPct(g.share)}`,
    }));
    section.body.replaceChildren(
      h('dl', { class: 'kpis' },
        kpi('Plays', fmtNum(k.plays, 0)),
        kpi('Hours listened', fmtNum(k.listening_hours)),
        kpi('Distinct tracks', fmtNum(k.unique_tracks, 0)),
        kpi('Distinct artists', fmtNum(k.unique_artists, 0)),
        kpi('Sessions', fmtNum(k.sessions, 0)),
        kpi('Average session', isNum(k.avg_session_min) ? `${fmtNum(k.avg_session_min)} min` : '—'),
        kpi('Skip rate', fmtPct(k.skip_rate)),
        kpi('Repeat rate', fmtPct(k.repeat_rate))),
      h('div', { class: 'tops' },
        h('div', null, h('h3', null, 'Top artists'),
          artists.length ? shareList(artists, { label: 'Top artists by plays' }) : h('p', { class: 'muted' }, 'None.')),
        h('div', null, h('h3', null, 'Top genres'),
          genres.length ? shareList(genres, { label: 'Top genres by plays' }) : h('p', { class: 'muted' }, 'None.'))),
    );
  }
}
