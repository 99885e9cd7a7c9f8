"""The messages sent for a job: system prompt (with the listening profile), context, the
user's messages; and what the grounding records of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from echotune.common.listening_profile import ListeningProfile
from echotune.common.messages import (
    ChatJob,
    ChatMessage,
    ProfileFeature,
    ProfileStatus,
    ProfileUse,
    PromptSummary,
    Role,
)
from echotune.worker.conversations import ConversationContext
from echotune.worker.profile import LoadedProfile

SYSTEM_PROMPT = "You are EchoTune, a friendly music recommendation assistant. Answer concisely."
PROFILE_HEAD = "What you know of this listener from their listening history (times in {zone}):"
PROFILE_TAIL = (
    "Use it to make recommendations personal when it helps: build on their taste and suggest "
    "music they have not played yet. Do not recite the profile."
)
LABELS = {
    "period": "Plays",
    "top_artists": "Top artists",
    "top_genres": "Top genres",
    "favourite_hours": "Listens most at",
    "favourite_weekdays": "Listens most on",
    "recent_tracks": "Recently played",
    "skip_rate": "Skips",
}
EXCERPT_CHARS = 600


@dataclass(frozen=True, slots=True)
class Prompt:
    """Everything sent for a job (before any continuation), and the profile's use."""

    messages: list[ChatMessage]
    profile_use: ProfileUse
    profile: ListeningProfile | None
    system: str = ""
    """echotune's system prompt (empty when the request brought its own)."""

    def summary(self) -> PromptSummary:
        """Sizes of everything sent; an excerpt of our own system prompt only (a caller's
        prompts and the conversation's turns are theirs, not recorded)."""
        return PromptSummary(
            system_excerpt=self.system[:EXCERPT_CHARS],
            system_chars=len(self.system),
            messages=len(self.messages),
            chars=sum(len(m.content) for m in self.messages),
        )


def build_prompt(
    job: ChatJob, context: ConversationContext, loaded: LoadedProfile, max_chars: int
) -> Prompt:
    """The job's messages; a caller's own system message replaces ours (and the profile)."""
    if any(m.role is Role.SYSTEM for m in job.messages):
        return Prompt([*context.messages, *job.messages], _unused(loaded), None)
    block, features = "", list[ProfileFeature]()
    if loaded.profile is not None:
        block, features = profile_block(loaded.profile, max_chars)
    system = f"{SYSTEM_PROMPT}\n\n{block}" if block else SYSTEM_PROMPT
    use = loaded.use.model_copy(update={"features": features})
    if loaded.profile is not None and not features:
        use = ProfileUse(status=ProfileStatus.SKIPPED, reason="prompt_bound", load_ms=use.load_ms)
    messages = [ChatMessage(role=Role.SYSTEM, content=system), *context.messages, *job.messages]
    return Prompt(messages, use, loaded.profile if features else None, system)


def profile_block(profile: ListeningProfile, max_chars: int) -> tuple[str, list[ProfileFeature]]:
    """The profile's part of the system prompt, within ``max_chars``: features in order of
    importance, as many as fit; and the features it states."""
    head, tail = PROFILE_HEAD.format(zone=profile.time_zone), PROFILE_TAIL
    lines: list[str] = []
    used: list[ProfileFeature] = []
    size = len(head) + len(tail) + 2
    for feature in profile.features():
        line = f"- {LABELS[feature.name]}: {_stated(feature.name, feature.value)}"
        if size + len(line) + 1 > max_chars:
            break
        lines.append(line)
        used.append(feature)
        size += len(line) + 1
    if not used:
        return "", []
    return "\n".join([head, *lines, tail]), used


def _stated(name: str, value: Any) -> str:
    if name == "favourite_hours":
        return ", ".join(f"{hour:02d}:00" for hour in value)
    if name == "skip_rate":
        return f"{value:.0%} of the tracks they start"
    if name == "recent_tracks":
        return "; ".join(value)
    return ", ".join(value) if isinstance(value, list) else str(value)


def _unused(loaded: LoadedProfile) -> ProfileUse:
    if loaded.profile is None:
        return loaded.use
    return ProfileUse(status=ProfileStatus.SKIPPED, reason="own_system_prompt")
