"""The web UI served by the gateway (static files, no build step)."""
