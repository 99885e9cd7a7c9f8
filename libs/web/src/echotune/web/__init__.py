"""What every echotune FastAPI service shares: the JSON error body, request ids, body limit."""
