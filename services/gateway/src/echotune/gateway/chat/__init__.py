"""Streaming chat: SSE endpoints, the multiplexed Redis relay, cancel and resume."""
