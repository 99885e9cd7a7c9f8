"""The system prompt with a profile (bounded, features recorded), confidence, the demo."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import pytest

from echotune.common.completion import TokenLogprob
from echotune.common.listening_profile import ListeningProfile, Ranked
from echotune.common.messages import (
    ChatJob,
    ChatMessage,
    ProfileStatus,
    ProfileUse,
    Role,
)
from echotune.worker.confidence import ConfidenceMeter
from echotune.worker.conversations import ConversationContext
from echotune.worker.profile import LoadedProfile
from echotune.worker.prompt import SYSTEM_PROMPT, build_prompt, profile_block
from echotune.worker.providers.demo import compose_answer

PROFILE = ListeningProfile(
    plays=120,
    first_play=datetime(2024, 3, 1, 20, tzinfo=UTC),
    last_play=datetime(2024, 4, 1, 22, tzinfo=UTC),
    time_zone="Europe/Paris",
    top_artists=[Ranked(name="Portishead", share=0.25), Ranked(name="Massive Attack", share=0.2)],
    top_genres=[Ranked(name="trip hop", share=0.45), Ranked(name="jazz", share=0.1)],
    favourite_hours=[22, 21],
    favourite_weekdays=["Friday"],
    recent_tracks=["Portishead – Roads"],
    skip_rate=0.125,
)
USED = LoadedProfile(ProfileUse(status=ProfileStatus.USED, source="cache", load_ms=1.0), PROFILE)


def job(*messages: ChatMessage) -> ChatJob:
    return ChatJob(
        request_id="r-00000001",
        messages=list(messages) or [ChatMessage(role=Role.USER, content="jazz for tonight")],
        provider="demo",
        model="m",
        deadline_at=time.time() + 60,
    )


def test_the_profile_goes_into_our_system_prompt() -> None:
    prompt = build_prompt(job(), ConversationContext(), USED, max_chars=2000)
    system = prompt.messages[0]
    assert system.role is Role.SYSTEM
    assert system.content.startswith(SYSTEM_PROMPT)
    assert "- Top artists: Portishead (25%), Massive Attack (20%)" in system.content
    assert "- Listens most at: 22:00, 21:00" in system.content
    assert "- Skips: 12% of the tracks they start" in system.content
    assert "(times in Europe/Paris)" in system.content
    assert "- Plays: 120 plays, 2024-03-01 to 2024-04-02" in system.content  # local days
    assert [f.name for f in prompt.profile_use.features] == [
        "period", "top_artists", "top_genres", "favourite_hours", "favourite_weekdays",
        "recent_tracks", "skip_rate",
    ]  # fmt: skip
    summary = prompt.summary()
    assert summary.system_chars == len(system.content)
    assert (summary.messages, summary.chars) == (2, len(system.content) + len("jazz for tonight"))


@pytest.mark.parametrize(
    ("played", "zone"),
    [
        (datetime(1, 1, 1, 1, tzinfo=UTC), "America/New_York"),
        (datetime(9999, 12, 31, 23, tzinfo=UTC), "Asia/Tokyo"),
    ],
)
def test_a_play_whose_local_day_is_out_of_range_keeps_its_utc_day(
    played: datetime, zone: str
) -> None:
    """The importer takes such plays; their local day overflowed and failed every prompt."""
    profile = PROFILE.model_copy(
        update={"plays": 1, "first_play": played, "last_play": played, "time_zone": zone}
    )
    loaded = LoadedProfile(ProfileUse(status=ProfileStatus.USED, source="cache"), profile)
    system = build_prompt(job(), ConversationContext(), loaded, max_chars=2000).messages[0]
    day = f"{played:%Y-%m-%d}"
    assert f"- Plays: 1 plays, {day} to {day}" in system.content


@pytest.mark.parametrize("bound", [0, 200, 300, 400, 600])
def test_the_profile_stays_within_its_bound_and_records_what_it_states(bound: int) -> None:
    block, features = profile_block(PROFILE, bound)
    assert len(block) <= bound
    names = [f.name for f in features]
    assert names == [f.name for f in PROFILE.features()][: len(names)], "most important first"
    prompt = build_prompt(job(), ConversationContext(), USED, max_chars=bound)
    assert prompt.profile_use.features == features
    if not features:
        assert prompt.messages[0].content == SYSTEM_PROMPT
        assert (prompt.profile_use.status, prompt.profile_use.reason) == (
            ProfileStatus.SKIPPED,
            "prompt_bound",
        )
        assert prompt.profile is None


def test_a_callers_own_system_prompt_is_left_alone() -> None:
    own = ChatMessage(role=Role.SYSTEM, content="You are a pirate.")
    prompt = build_prompt(
        job(own, ChatMessage(role=Role.USER, content="hi")), ConversationContext(), USED, 2000
    )
    assert [m.content for m in prompt.messages] == ["You are a pirate.", "hi"]
    assert prompt.profile_use.status is ProfileStatus.SKIPPED
    assert prompt.profile_use.reason == "own_system_prompt"
    summary = prompt.summary()
    assert (summary.system_excerpt, summary.system_chars) == ("", 0), "theirs is not recorded"
    assert (summary.messages, summary.chars) == (2, len("You are a pirate.hi"))


def test_without_a_profile_the_prompt_is_as_before() -> None:
    off = LoadedProfile(ProfileUse(status=ProfileStatus.OFF))
    prompt = build_prompt(job(), ConversationContext(), off, 2000)
    assert [m.content for m in prompt.messages] == [SYSTEM_PROMPT, "jazz for tonight"]
    assert prompt.profile_use == ProfileUse(status=ProfileStatus.OFF)


def test_confidence_is_the_mean_and_least_token_probability() -> None:
    logprobs = [-0.01, -0.7, -3.2, 0.0, 1e-9]  # a rounded logprob can come out above 0
    meter, other = ConfidenceMeter(), ConfidenceMeter()
    meter.add(TokenLogprob(token=f"t{i}", logprob=lp) for i, lp in enumerate(logprobs[:3]))
    other.add(TokenLogprob(token=f"u{i}", logprob=lp) for i, lp in enumerate(logprobs[3:]))
    meter.merge(other)
    probabilities = [min(math.exp(lp), 1.0) for lp in logprobs]
    result = meter.result()
    assert result is not None
    assert result.mean == pytest.approx(sum(probabilities) / 5, abs=1e-6)
    assert result.min == pytest.approx(math.exp(-3.2), abs=1e-6)
    assert result.tokens == 5
    assert ConfidenceMeter().result() is None


def test_the_demo_builds_on_the_profile() -> None:
    question = "Something for tonight?"
    plain, personal = compose_answer(question), compose_answer(question, PROFILE)
    assert "Portishead" not in plain
    assert "connect a real LLM" in plain
    assert "Picked for you: you often play Portishead and Massive Attack" in personal
    assert "lean towards trip hop" in personal
    assert "jazz tour" in personal, "the first top genre the demo knows leads"
    assert compose_answer(question, PROFILE) == personal, "deterministic"
    assert "workout" in compose_answer("music for my workout", PROFILE).lower(), "asked wins"
