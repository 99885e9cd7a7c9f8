// Provider chips: live health from the gateway, quick-switch (saved server-side per user).

import { $, h, fmtMs, fmtPct, fmtDuration, isNum } from './dom.js';
import { api } from './api.js';
import { toast } from './toast.js';

export const POLL_MS = 4000;

const STATUS_TEXT = { healthy: 'healthy', degraded: 'degraded', unhealthy: 'unhealthy', unknown: 'status unknown' };

/** Provider list + health, polled while someone is signed in and the page is visible. */
export class Providers {
  constructor() {
    this.list = null; // GET /api/providers
    this.health = null; // GET /api/providers/health
    this.healthError = null;
    this.listeners = new Set();
    this.timer = 0;
    this.ticker = 0;
    this.switching = false;
    document.addEventListener('visibilitychange', () => {
      if (this.running && !document.hidden) this.refresh();
    });
  }

  subscribe(listener) {
    this.listeners.add(listener);
  }

  start() {
    this.running = true;
    this.refresh();
    clearInterval(this.timer);
    clearInterval(this.ticker);
    this.timer = setInterval(() => { if (!document.hidden) this.refresh(); }, POLL_MS);
    // Countdowns to the next probe of open breakers move every second.
    this.ticker = setInterval(() => this.emit(), 1000);
  }

  stop() {
    this.running = false;
    clearInterval(this.timer);
    clearInterval(this.ticker);
  }

  async refresh() {
    const [list, health] = await Promise.allSettled([api('/api/providers'), api('/api/providers/health')]);
    if (!this.running) return;
    if (list.status === 'fulfilled') {
      this.list = list.value;
      this.listError = null;
    } else {
      this.listError = list.reason;
    }
    if (health.status === 'fulfilled') {
      this.health = health.value;
      this.healthError = null;
    } else {
      this.healthError = health.reason;
    }
    this.emit();
  }

  emit() {
    for (const listener of this.listeners) listener(this);
  }

  /** One entry per provider, merging the list (selection, models) and the health figures. */
  entries() {
    if (!this.list) return [];
    const health = new Map((this.health ? this.health.providers : []).map((p) => [p.id, p]));
    const selection = this.list.selection || {};
    return this.list.providers.map((p) => {
      const live = health.get(p.id);
      const breaker = live ? live.breaker : { state: p.breaker_state };
      return {
        id: p.id,
        kind: p.kind,
        isDemo: p.is_demo,
        configured: p.configured,
        selected: p.selected,
        model: p.selected && selection.model ? selection.model : p.default_model,
        status: live ? live.status : 'unknown',
        breaker,
        live: live ? live.live : null,
      };
    });
  }

  async switchTo(entry) {
    if (this.switching) return;
    const why = unavailableReason(entry);
    if (why) {
      toast(`${entry.id} cannot be chosen now: ${why}.`, { kind: 'info' });
      return;
    }
    if (entry.selected) return;
    this.switching = true;
    try {
      const selection = await api('/api/providers/switch', { method: 'POST', body: { provider: entry.id } });
      toast(`New messages are answered by ${selection.provider} · ${selection.model}.`, { kind: 'info' });
    } catch (error) {
      if (error.status !== 401) toast(`Could not switch to ${entry.id}: ${error.message}`);
    } finally {
      this.switching = false;
      await this.refresh();
    }
  }
}

/** Why a provider cannot be chosen (null when it can). */
export function unavailableReason(entry) {
  if (!entry.configured) return 'it is not configured';
  if (entry.breaker && entry.breaker.state === 'open') {
    return `its circuit breaker is open; ${probeText(entry.breaker)}`;
  }
  return null;
}

function probeText(breaker) {
  if (!isNum(breaker.next_probe_at)) return 'it will be probed again later';
  const seconds = breaker.next_probe_at - Date.now() / 1000;
  return seconds > 0 ? `next probe in ${fmtDuration(seconds)}` : 'probing again now';
}

function chipParts(entry) {
  const why = unavailableReason(entry);
  const latency = entry.live && isNum(entry.live.latency_p50_ms) ? `p50 ${fmtMs(entry.live.latency_p50_ms)}` : 'p50 —';
  let state = STATUS_TEXT[entry.status] || entry.status;
  if (why) state = entry.configured ? `unavailable, ${probeText(entry.breaker)}` : 'not configured';
  return { why, latency, state };
}

/** Draw the chips into `list` (a <ul>), reusing existing buttons so that focus stays put. */
export function renderChips(providers, list) {
  const entries = providers.entries();
  const existing = new Map([...list.children].map((li) => [li.dataset.provider, li]));
  entries.forEach((entry, index) => {
    let li = existing.get(entry.id);
    if (!li) {
      const button = h('button', { type: 'button', class: 'chip' },
        h('span', { class: 'chip-dot', 'aria-hidden': 'true' }),
        h('span', { class: 'chip-name' }),
        h('span', { class: 'chip-model' }),
        h('span', { class: 'chip-latency' }),
        h('span', { class: 'chip-state' }));
      button.addEventListener('click', () => {
        const current = providers.entries().find((e) => e.id === entry.id);
        if (current) providers.switchTo(current);
      });
      li = h('li', { dataset: { provider: entry.id } }, button);
    }
    existing.delete(entry.id);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
    const button = li.firstElementChild;
    const { why, latency, state } = chipParts(entry);
    button.dataset.health = why ? 'unavailable' : entry.status;
    button.setAttribute('aria-pressed', String(entry.selected));
    if (why) button.setAttribute('aria-disabled', 'true');
    else button.removeAttribute('aria-disabled');
    setText(button.querySelector('.chip-name'), entry.id + (entry.isDemo ? ' (demo)' : ''));
    setText(button.querySelector('.chip-model'), entry.model);
    setText(button.querySelector('.chip-latency'), latency);
    setText(button.querySelector('.chip-state'), state);
    button.title = entry.live
      ? `${entry.id}: ${state}; last 5 min: ${entry.live.requests} calls, success ${fmtPct(entry.live.success_rate)}, p50 ${fmtMs(entry.live.latency_p50_ms)}, p95 ${fmtMs(entry.live.latency_p95_ms)}`
      : `${entry.id}: ${state}`;
  });
  for (const li of existing.values()) li.remove();
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** The chat view's chips and their status line. */
export function mountChips(providers) {
  const list = $('#provider-chips');
  const status = $('#providers-status');
  providers.subscribe(() => {
    renderChips(providers, list);
    let message = '';
    if (providers.listError && !providers.list) message = `Providers unavailable: ${providers.listError.message}`;
    else if (providers.healthError) message = 'Live provider health is unavailable right now.';
    if (status.textContent !== message) status.textContent = message;
  });
}
