"""Offline demo provider: deterministic music-recommendation answers, no network."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

from echotune.common.listening_profile import ListeningProfile
from echotune.common.messages import FinishReason, Role, Usage
from echotune.common.providers import ProviderConfig
from echotune.worker.providers.base import Finish, ProviderRequest, StreamItem, TextChunk


@dataclass(frozen=True, slots=True)
class Theme:
    """One kind of answer, chosen when the user's message has one of its keywords."""

    keywords: frozenset[str]
    intro: str
    picks: tuple[str, ...]
    tip: str


def _theme(keywords: str, intro: str, picks: tuple[str, ...], tip: str) -> Theme:
    return Theme(frozenset(keywords.split()), intro, picks, tip)


THEMES = (
    _theme(
        "workout gym run running training cardio lift lifting exercise hiit pump",
        "For a workout you want driving rhythms around 120 to 150 BPM.",
        (
            "Survivor - Eye of the Tiger",
            "Daft Punk - Harder, Better, Faster, Stronger",
            "Eminem - Lose Yourself",
            "The Prodigy - Breathe",
            "Dua Lipa - Physical",
        ),
        "Put the fastest track where your hardest interval starts.",
    ),
    _theme(
        "focus study studying concentrate concentration coding code homework reading",
        "For focus, instrumental music with steady textures keeps words out of your head.",
        (
            "Brian Eno - An Ending (Ascent)",
            "Nils Frahm - Says",
            "Tycho - Awake",
            "Bonobo - Kiara",
            "Max Richter - On the Nature of Daylight",
        ),
        "Keep the volume low and let one album play through.",
    ),
    _theme(
        "sleep relax relaxing calm chill bedtime meditation unwind wind",
        "To wind down, slow tempos and soft dynamics work best.",
        (
            "Erik Satie - Gymnopedie No. 1",
            "Sigur Ros - Svefn-g-englar",
            "Marconi Union - Weightless",
            "Norah Jones - Don't Know Why",
            "Khruangbin - White Gloves",
        ),
        "A sleep timer of thirty minutes is usually enough.",
    ),
    _theme(
        "sad heartbreak breakup melancholy lonely rainy blue cry crying",
        "When you feel low, songs that meet the mood before lifting it can help.",
        (
            "Adele - Someone Like You",
            "Bon Iver - Skinny Love",
            "Radiohead - No Surprises",
            "Phoebe Bridgers - Motion Sickness",
            "Coldplay - Fix You",
        ),
        "End the playlist with something warmer to leave on a hopeful note.",
    ),
    _theme(
        "happy party dance dancing upbeat summer celebrate fun energetic",
        "For a bright mood, think big choruses and danceable grooves.",
        (
            "Pharrell Williams - Happy",
            "Earth, Wind & Fire - September",
            "Lizzo - Good as Hell",
            "Mark Ronson - Uptown Funk",
            "ABBA - Dancing Queen",
        ),
        "Start mid-tempo and build up so the room keeps its energy.",
    ),
)
GENRES = {
    "jazz": ("Miles Davis - So What", "John Coltrane - Naima", "Kamasi Washington - Truth"),
    "rock": (
        "Queen - Bohemian Rhapsody",
        "The Rolling Stones - Paint It Black",
        "Foo Fighters - Everlong",
    ),
    "metal": ("Metallica - Master of Puppets", "Iron Maiden - The Trooper", "Gojira - Stranded"),
    "classical": (
        "J. S. Bach - Cello Suite No. 1",
        "Claude Debussy - Clair de Lune",
        "Arvo Part - Spiegel im Spiegel",
    ),
    "electronic": ("Aphex Twin - Xtal", "Daft Punk - Around the World", "Four Tet - Baby"),
    "hip": (
        "A Tribe Called Quest - Electric Relaxation",
        "Kendrick Lamar - Alright",
        "Nas - N.Y. State of Mind",
    ),
    "indie": (
        "Arctic Monkeys - Do I Wanna Know?",
        "The Strokes - Last Nite",
        "Alvvays - Archie, Marry Me",
    ),
    "pop": ("Michael Jackson - Billie Jean", "Robyn - Dancing On My Own", "Taylor Swift - Style"),
}
GENRE_ALIASES = {"rap": "hip", "techno": "electronic", "house": "electronic", "edm": "electronic"}
DEFAULT_THEME = _theme(
    "",
    "Here are a few well-loved tracks across styles to start your discovery.",
    (
        "Fleetwood Mac - Dreams",
        "Stevie Wonder - Superstition",
        "Tame Impala - The Less I Know the Better",
        "Nina Simone - Feeling Good",
        "Massive Attack - Teardrop",
    ),
    "Ask for a mood, a genre or an activity to get a sharper list.",
)
NOTE = "(Offline demo provider: connect a real LLM for personal recommendations.)"
PERSONAL_NOTE = "(Offline demo provider: picked with your listening history, no LLM involved.)"


def _genre_theme(words: list[str]) -> Theme | None:
    """A theme for the first genre named in ``words``, if any."""
    genre = next(
        (GENRE_ALIASES.get(w, w) for w in words if GENRE_ALIASES.get(w, w) in GENRES), None
    )
    if genre is None:
        return None
    label = "hip hop" if genre == "hip" else genre
    intro = f"Here is a short {label} tour, from classics to newer favourites."
    tip = "Tell me an artist you like and I will narrow it down."
    return Theme(frozenset({genre}), intro, GENRES[genre], tip)


def _last_user_text(request: ProviderRequest) -> str:
    """The text of the last user message (empty if there is none)."""
    users = [m.content for m in request.messages if m.role is Role.USER]
    return users[-1] if users else ""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _profile_theme(profile: ListeningProfile | None) -> Theme | None:
    """A genre theme for the listener's most played genre that has one."""
    genres = profile.top_genres if profile else []
    return next((t for g in genres if (t := _genre_theme(_words(g.name)))), None)


def _personal(profile: ListeningProfile) -> str:
    """One sentence saying what of the listener's history the answer builds on."""
    parts = []
    if artists := [a.name for a in profile.top_artists[:2]]:
        parts.append(f"you often play {' and '.join(artists)}")
    if profile.top_genres:
        parts.append(f"lean towards {profile.top_genres[0].name}")
    if profile.favourite_hours:
        parts.append(f"listen most around {profile.favourite_hours[0]:02d}:00")
    return f"Picked for you: {', '.join(parts)}." if parts else ""


def compose_answer(question: str, profile: ListeningProfile | None = None) -> str:
    """The full demo answer to ``question`` (deterministic), built on ``profile`` if given:
    its genre leads when the question names none, and the answer says what it used."""
    words = _words(question)
    theme = next((t for t in THEMES if t.keywords.intersection(words)), None)
    theme = theme or _genre_theme(words) or _profile_theme(profile) or DEFAULT_THEME
    seed = int.from_bytes(hashlib.sha256(question.strip().lower().encode()).digest()[:4], "big")
    picks = [theme.picks[(seed + i) % len(theme.picks)] for i in range(3)]
    topic = " ".join(question.split()[:6]) or "music"
    lines = [
        f'You asked about "{topic}".',
        theme.intro,
        _personal(profile) if profile else "",
        f"Try {picks[0]}, then {picks[1]}, and finish with {picks[2]}.",
        theme.tip,
        PERSONAL_NOTE if profile else NOTE,
    ]
    return " ".join(line for line in lines if line)


def tokenize(text: str) -> list[str]:
    """Word tokens, each keeping the space that follows it."""
    return re.findall(r"\S+\s*", text)


class DemoProvider:
    """Streams :func:`compose_answer` word by word, ``config.token_pace_ms`` apart."""

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.client = client

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield the answer's tokens then a Finish with rough usage counts."""
        text = compose_answer(_last_user_text(request), request.profile)
        reason = FinishReason.STOP
        for stop in request.stop or []:
            if stop and stop in text:
                text = text[: text.index(stop)]
        tokens = tokenize(text)
        if request.max_tokens is not None and len(tokens) > request.max_tokens:
            tokens, reason = tokens[: request.max_tokens], FinishReason.LENGTH
        pace = self.config.token_pace_ms / 1000.0
        for index, token in enumerate(tokens):
            if index:
                await asyncio.sleep(pace)
            yield TextChunk(token)
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        usage = Usage(prompt_tokens=math.ceil(prompt_words * 4 / 3), completion_tokens=len(tokens))
        yield Finish(reason, usage)
