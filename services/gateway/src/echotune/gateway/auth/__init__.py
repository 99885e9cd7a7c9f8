"""Who is calling: API keys (stored hashed) and browser sessions signed by the gateway."""
