// The explainability panel of one answer, and its debug info as JSON.

import { h, fmtMs, fmtNum, isNum } from './dom.js';
import { toast } from './toast.js';
import { renderWhy } from './why.js';

const REASONS = {
  rate_limited: 'rate limited',
  timeout: 'timed out',
  provider_error: 'provider error',
  unavailable: 'unavailable',
  open: 'circuit breaker open',
  breaker_open: 'circuit breaker open',
  worker_lost: 'worker lost, started again',
  partial_answer: 'failed mid-answer',
};

export const reasonText = (reason) => REASONS[reason] || String(reason || 'unknown').replaceAll('_', ' ');

/** Output tokens per second of generation (after the first token when TTFT is known). */
export function tokensPerSecond(done) {
  if (!done || !done.usage || !done.timings) return null;
  const tokens = done.usage.completion_tokens;
  const { ttft_ms: ttft, total_ms: total } = done.timings;
  const span = isNum(ttft) && total - ttft > 0 ? total - ttft : total;
  return isNum(tokens) && tokens > 0 && span > 0 ? tokens / (span / 1000) : null;
}

/** The attempt chain: one entry per failed attempt or failover, then the outcome. */
export function attemptChain(answer) {
  const entries = [];
  let attemptOnProvider = 0;
  for (const step of answer.chain) {
    if (step.type === 'retry') {
      attemptOnProvider = step.attempt;
      entries.push({
        kind: 'retry',
        provider: step.provider,
        attempt: step.attempt,
        reason: step.reason,
        delay_ms: step.delay_ms,
        text: `${step.provider}, attempt ${step.attempt}: ${reasonText(step.reason)}, retried after ${fmtMs(step.delay_ms)}`,
      });
    } else if (step.type === 'failover') {
      attemptOnProvider = 0;
      const discarded = step.discard_partial ? ' (partial text discarded)' : '';
      const continues = step.continues_partial ? ' (continues the partial text)' : '';
      entries.push({
        kind: 'failover',
        from: step.from_provider,
        to: step.to_provider,
        to_model: step.to_model,
        reason: step.reason,
        discard_partial: !!step.discard_partial,
        text: `${step.from_provider}: ${reasonText(step.reason)}, failover to ${step.to_provider} · ${step.to_model}${discarded}${continues}`,
      });
    }
  }
  if (answer.done) {
    const d = answer.done;
    const outcome = d.finish_reason === 'cancelled' ? 'stopped' : `answered (${d.finish_reason})`;
    entries.push({
      kind: 'answer',
      provider: d.provider,
      model: d.model,
      attempt: attemptOnProvider + 1,
      finish_reason: d.finish_reason,
      text: `${d.provider} · ${d.model}, attempt ${attemptOnProvider + 1}: ${outcome}`,
    });
  } else if (answer.error) {
    const e = answer.error;
    entries.push({
      kind: 'error',
      provider: e.provider || null,
      code: e.code,
      text: `${e.provider ? `${e.provider}: ` : ''}failed (${reasonText(e.code)}): ${e.message}`,
    });
  }
  return entries;
}

/** Everything known about an answer, for "copy debug info". */
export function debugInfo(answer) {
  const done = answer.done;
  return {
    request_id: answer.rid,
    conversation_id: answer.conversationId,
    use_context: answer.useContext,
    use_profile: answer.useProfile,
    time_zone: answer.timeZone,
    message_chars: answer.message.length,
    state: answer.state,
    provider: done ? done.provider : answer.start && answer.start.provider,
    model: done ? done.model : answer.start && answer.start.model,
    requested: answer.start ? { provider: answer.start.provider, model: answer.start.model } : null,
    finish_reason: done ? done.finish_reason : null,
    attempts: done ? done.attempts : null,
    chain: attemptChain(answer),
    timings: {
      ttft_ms: done && done.timings ? done.timings.ttft_ms ?? null : null,
      total_ms: done && done.timings ? done.timings.total_ms : null,
      browser_ttft_ms: answer.clientTtftMs,
      browser_total_ms: answer.clientTotalMs,
    },
    usage: done ? done.usage : null,
    tokens_per_s: tokensPerSecond(done),
    context: done ? done.context : null,
    grounding: done ? done.grounding ?? null : null,
    confidence: done ? done.confidence ?? null : null,
    reconnects: answer.reconnects,
    last_event_id: answer.lastEventId,
    error: answer.error || answer.httpError || null,
    user_agent: navigator.userAgent,
  };
}

function fact(key, label, ...value) {
  return h('div', { class: 'fact', 'data-fact': key }, h('dt', null, label), h('dd', null, ...value));
}

/** (Re)draw the panel's content. */
export function renderPanel(answer, panel) {
  const info = debugInfo(answer);
  const done = answer.done;
  const via = info.provider ? `${info.provider} · ${info.model}` : '—';
  let outcome = 'in progress';
  if (done) outcome = done.finish_reason === 'cancelled' ? 'stopped (cancelled)' : done.finish_reason;
  else if (answer.error) outcome = `error: ${answer.error.code}`;
  else if (answer.httpError) outcome = `not started: HTTP ${answer.httpError.status}`;
  const t = info.timings;
  const ttft = [fmtMs(t.ttft_ms)];
  if (isNum(t.browser_ttft_ms)) ttft.push(h('span', { class: 'muted' }, ` (browser ${fmtMs(t.browser_ttft_ms)})`));
  const total = [fmtMs(t.total_ms)];
  if (isNum(t.browser_total_ms)) total.push(h('span', { class: 'muted' }, ` (browser ${fmtMs(t.browser_total_ms)})`));
  const usage = info.usage;
  let context = answer.useContext ? 'on' : 'off';
  if (info.context && answer.useContext) {
    context = `${info.context.turns} earlier turns, ${fmtNum(info.context.chars, 0)} characters`;
  }
  const chain = attemptChain(answer);
  const copy = h('button', { type: 'button', class: 'btn btn-small' }, 'Copy debug info');
  copy.addEventListener('click', () => copyText(JSON.stringify(debugInfo(answer), null, 2), panel));
  panel.replaceChildren(
    h('dl', { class: 'facts' },
      fact('answered_by', 'Answered by', via),
      fact('outcome', 'Outcome', outcome),
      fact('ttft', 'Time to first token', ...ttft),
      fact('total', 'Total time', ...total),
      fact('tokens', 'Tokens', usage ? `${fmtNum(usage.prompt_tokens, 0)} in · ${fmtNum(usage.completion_tokens, 0)} out` : '—'),
      fact('tokens_per_s', 'Tokens/s', fmtNum(info.tokens_per_s)),
      fact('context', 'Context used', context),
      fact('request_id', 'Request id', h('code', null, answer.rid)),
      answer.conversationId ? fact('conversation', 'Conversation', h('code', null, answer.conversationId)) : null,
      answer.reconnects ? fact('reconnects', 'Reconnects', String(answer.reconnects)) : null,
    ),
    ...renderWhy(answer, panel.id),
    h('h3', { class: 'panel-title' }, `Attempts${done ? ` (${done.attempts})` : ''}`),
    chain.length
      ? h('ol', { class: 'chain' }, chain.map((e) => h('li', { 'data-kind': e.kind }, e.text)))
      : h('p', { class: 'muted small' }, 'Waiting for the first attempt…'),
    h('div', { class: 'panel-actions' }, copy),
  );
}

async function copyText(text, panel) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Debug info copied to the clipboard.', { kind: 'info' });
    return;
  } catch {
    // Clipboard API refused (permissions, insecure context): let the user copy it by hand.
  }
  const box = h('textarea', { class: 'debug-box', readonly: true, rows: 8, 'aria-label': 'Debug info (JSON)' });
  box.value = text;
  panel.append(box);
  box.focus();
  box.select();
  toast('Select-all and copy the debug info from the box.', { kind: 'info' });
}
