"""OpenAI-compatible front door: Chat Completions and Models over the same pipeline."""
