// "Why this answer": the listening features and prompt an answer was grounded in, and the
// model's confidence in its wording (from token probabilities), as the `done` event tells.

import { h, fmtNum, isNum } from './dom.js';

const FEATURES = {
  period: 'Plays considered',
  top_artists: 'Top artists',
  top_genres: 'Top genres',
  favourite_hours: 'Listens most at',
  favourite_weekdays: 'Listens most on',
  recent_tracks: 'Recently played',
  skip_rate: 'Skip rate',
};

const SKIP_REASONS = {
  timeout: 'not read in time',
  mongodb_paused: 'history store unavailable',
  mongodb_unavailable: 'history store unavailable',
  prompt_bound: 'too long for the prompt',
  own_system_prompt: 'the request brought its own system prompt',
};

const NO_CONFIDENCE = {
  not_offered: 'not offered by this provider',
  not_requested: 'not requested from this provider',
  requested: 'the provider sent no token probabilities',
};

export const CONFIDENCE_MEANING =
  'How sure the model was of the words it chose: the mean and the lowest probability of the ' +
  'answer\u2019s tokens. It measures certainty about wording, not whether the answer is right.';

const percent = (v) => (isNum(v) ? `${fmtNum(v * 100, 0)}%` : '—');

function featureText(name, value) {
  if (name === 'favourite_hours') return value.map((hour) => `${String(hour).padStart(2, '0')}:00`).join(', ');
  if (name === 'skip_rate') return percent(value);
  if (Array.isArray(value)) return value.join(name === 'recent_tracks' ? '; ' : ', ');
  return String(value);
}

/** One line about the listening profile's part in the answer. */
export function profileText(profile, useProfile) {
  if (!profile) return useProfile ? '—' : 'off';
  if (profile.status === 'used') return `used (${profile.features.length} features, from ${profile.source === 'cache' ? 'the cache' : 'the history'})`;
  if (profile.status === 'off') return 'off';
  if (profile.status === 'empty') return 'no listening history yet';
  return `skipped: ${SKIP_REASONS[profile.reason] || String(profile.reason || 'unknown').replaceAll('_', ' ')}`;
}

/** The confidence figure, or why there is none. */
export function confidenceText(done) {
  if (!done) return '—';
  const c = done.confidence;
  if (c) return `mean ${percent(c.mean)} · lowest ${percent(c.min)} (${fmtNum(c.tokens, 0)} tokens)`;
  const logprobs = done.grounding ? done.grounding.logprobs : null;
  return NO_CONFIDENCE[logprobs] || '—';
}

/** The prompt summary in one line. */
export function promptText(prompt) {
  if (!prompt) return '—';
  return `${fmtNum(prompt.messages, 0)} messages, ${fmtNum(prompt.chars, 0)} characters (system prompt ${fmtNum(prompt.system_chars, 0)})`;
}

function fact(key, label, ...value) {
  return h('div', { class: 'fact', 'data-fact': key }, h('dt', null, label), h('dd', null, ...value));
}

/** The "Why this answer" section of an answer's panel. */
export function renderWhy(answer, panelId) {
  const done = answer.done;
  const grounding = done ? done.grounding : null;
  const features = grounding && grounding.profile ? grounding.profile.features : [];
  const tipId = `${panelId}-confidence-meaning`;
  const about = h('button', {
    type: 'button', class: 'info', 'aria-label': 'What confidence means', 'aria-describedby': tipId,
  }, '?');
  const children = [
    h('h3', { class: 'panel-title' }, 'Why this answer'),
    h('dl', { class: 'facts why' },
      fact('profile', 'Listening profile', profileText(grounding && grounding.profile, answer.useProfile)),
      features.map((f) => fact(`feature-${f.name}`, FEATURES[f.name] || f.name, featureText(f.name, f.value))),
      fact('prompt', 'Prompt sent', promptText(grounding && grounding.prompt)),
      fact('confidence',
        h('span', { class: 'term' }, 'Confidence ', about,
          h('span', { role: 'tooltip', id: tipId, class: 'tooltip' }, CONFIDENCE_MEANING)),
        confidenceText(done)),
    ),
  ];
  if (grounding && grounding.prompt && grounding.prompt.system_excerpt) {
    children.push(h('details', { class: 'prompt-excerpt' },
      h('summary', null, 'System prompt sent (excerpt)'),
      h('pre', null, grounding.prompt.system_excerpt)));
  }
  return children;
}
