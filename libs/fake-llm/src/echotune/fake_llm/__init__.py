"""Dev only: a scriptable fake LLM upstream and the client of its control API."""

from echotune.fake_llm.control import FakeUpstream

__all__ = ["FakeUpstream"]
