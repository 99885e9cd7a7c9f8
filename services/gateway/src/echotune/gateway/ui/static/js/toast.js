// Notifications: errors as alerts (with an optional action such as Retry), infos as status.

import { h } from './dom.js';

const INFO_TIMEOUT_MS = 6000;

/**
 * Show a toast. `action`: {label, run}; `retryAfter`: seconds the action stays disabled.
 * Errors stay until dismissed (they may carry an action); infos go away by themselves.
 */
export function toast(message, { kind = 'error', action = null, retryAfter = null, detail = null } = {}) {
  const region = document.getElementById('toasts');
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' });
  const dismiss = () => el.remove();
  el.append(h('p', { class: 'toast-text' }, message));
  if (detail) el.append(h('p', { class: 'toast-detail' }, detail));
  const actions = h('div', { class: 'toast-actions' });
  if (action) {
    const button = h('button', { type: 'button', class: 'btn btn-small btn-primary' }, action.label);
    button.addEventListener('click', () => {
      dismiss();
      action.run();
    });
    if (retryAfter && retryAfter > 0) {
      button.disabled = true;
      setTimeout(() => { button.disabled = false; }, retryAfter * 1000);
    }
    actions.append(button);
  }
  actions.append(
    h('button', { type: 'button', class: 'btn btn-small btn-quiet', onclick: dismiss }, 'Dismiss'),
  );
  el.append(actions);
  region.append(el);
  if (kind !== 'error') setTimeout(dismiss, INFO_TIMEOUT_MS);
  return { el, dismiss };
}

/** Remove every toast (e.g. on sign-out). */
export function clearToasts() {
  document.getElementById('toasts').replaceChildren();
}
