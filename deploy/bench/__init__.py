"""Latency benchmark: what the gateway and the workers add to a direct call to the upstream.

``python -m deploy.bench`` (or ``make bench``) starts Redis, the fake upstream LLM, one gateway
and K workers on this machine and runs an SSE load client in interleaved rounds of two arms:
A (client → fake upstream) and B (client → gateway → Redis → worker → fake upstream → worker →
Redis → gateway → client). See :mod:`deploy.bench.run` for the options and the report.
"""
