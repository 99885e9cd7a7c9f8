"""The invariants over what the run left behind: telemetry documents and the Redis keyspace.

Telemetry: each MongoDB document describes one attempt as its worker timed it (``ts`` is its
end, ``latencyMs`` its length), so the fake upstream's record of an attempt, which arrived
after the worker started timing it and before it stopped, lies inside exactly one document's
interval (one runner's attempts are sequential). Excused, because the design cannot do
otherwise: an attempt whose worker was SIGKILLed while it ran, or within a second after it
ended (its event is published in the background, after the attempt), and a document of an
attempt that ended before its request reached the upstream (cancelled before the request
was sent: no upstream record, no tokens, no first token).
"""

from __future__ import annotations

from typing import Any

from deploy.chaos.collect import LINGERING
from deploy.chaos.evidence import Evidence
from deploy.chaos.findings import Findings
from deploy.chaos.history import History
from echotune.common.breaker import CALLS_KEPT_MS

MATCH_SLACK_S = 0.05  # BSON dates keep milliseconds; both clocks are read around the events
PUBLISH_GRACE_NS = 1_000_000_000
TELEMETRY_MAXLEN = "ECHOTUNE_WORKER_TELEMETRY_MAXLEN"
APPROXIMATE_TRIM = 200  # XADD MAXLEN ~ trims whole stream nodes (100 entries by default)
NEVER_SENT = frozenset({"cancelled", "client_gone", "shutdown", "connect_error"})
DESIGNED_TO_LIVE = {
    "api-keys": "API keys (hash, lives until a key is revoked)",
    "provider-selection": "each user's chosen provider (hash)",
    "breaker": "one circuit-breaker hash per provider",
    "jobs-stream": "the jobs stream and its consumer group",
    "telemetry-stream": "the telemetry stream and its consumer group (bounded by its MAXLEN)",
    "telemetry-dlq": "unreadable telemetry (MAXLEN 100,000)",
    "workers-alive": "worker heartbeats (sorted set; expires once no worker beats)",
}


def check_telemetry(history: History, evidence: Evidence, findings: Findings) -> None:
    if not history.telemetry_drained:
        backlog = history.redis.get("telemetry_backlog")
        state = ""
        if backlog:
            state = f" (length {backlog[0]}, undelivered {backlog[1]}, unacknowledged {backlog[2]})"
        findings.add("telemetry", None, f"the telemetry stream was not drained into MongoDB{state}")
    docs: dict[str, list[dict[str, Any]]] = {}
    for doc in history.telemetry:
        docs.setdefault(doc["requestId"], []).append(doc)
    for request_id in sorted(set(docs) | set(evidence.attempts)):
        _match(request_id, evidence, docs.get(request_id, []), findings)


def _match(
    request_id: str, evidence: Evidence, docs: list[dict[str, Any]], findings: Findings
) -> None:
    attempts = sorted(evidence.attempts.get(request_id, []), key=lambda a: a["started_wall"])
    free = sorted(docs, key=lambda d: d["ts"] - d["latencyMs"] / 1000)
    matched: list[dict[str, Any]] = []
    for index, attempt in enumerate(attempts):
        at = attempt["started_wall"]
        fits = [
            d
            for d in free
            if d["ts"] - d["latencyMs"] / 1000 - MATCH_SLACK_S <= at <= d["ts"] + MATCH_SLACK_S
        ]
        if fits:
            doc = min(fits, key=lambda d: abs(d["ts"] - d["latencyMs"] / 1000 - at))
            free.remove(doc)
            matched.append(doc)
            continue
        _missing(request_id, index, attempt, evidence, findings)
    for doc in free:
        _unmatched(request_id, doc, matched, findings)


def _missing(
    request_id: str, index: int, attempt: dict[str, Any], ev: Evidence, findings: Findings
) -> None:
    start, end = attempt["started_ns"], attempt["ended_ns"] or ev.history.t_end_ns
    runners = set(ev.runners(request_id))
    for t_kill, process in ev.kills:
        if process in runners and start <= t_kill <= end + PUBLISH_GRACE_NS:
            findings.excuse(
                "telemetry",
                request_id,
                f"attempt {index}: its worker {process} was SIGKILLed before it could publish",
            )
            return
    lost = [r.message[:120] for r in ev.runs.get(request_id, []) if r.what == "telemetry_lost"]
    findings.add(
        "telemetry",
        request_id,
        f"upstream attempt {index} ({attempt['provider']}, {attempt['outcome']}, "
        f"{ev.since_t0(start)}..{ev.since_t0(attempt['ended_ns'])}) has no telemetry document",
        f"worker log: {lost}" if lost else ev.describe_runs(request_id),
    )


def _unmatched(
    request_id: str, doc: dict[str, Any], matched: list[dict[str, Any]], findings: Findings
) -> None:
    start = doc["ts"] - doc["latencyMs"] / 1000
    twin = [  # the same attempt recorded twice (a retry may start within the slack)
        m
        for m in matched
        if m["attempt"] == doc["attempt"]
        and abs(m["ts"] - m["latencyMs"] / 1000 - start) < MATCH_SLACK_S
    ]
    never_sent = (
        doc.get("errorCode") in NEVER_SENT and doc.get("ttftMs") is None and not doc["tokensOut"]
    )
    if never_sent and not twin:
        findings.excuse(
            "telemetry",
            request_id,
            f"document of an attempt that ended "
            f"({doc['errorCode']}) before its request reached the upstream",
        )
        return
    what = "duplicates another document" if twin else "matches no upstream attempt"
    findings.add(
        "telemetry",
        request_id,
        f"telemetry document {doc['_id']} (attempt {doc['attempt']}, {doc['provider']}, "
        f"success={doc['success']}, {doc.get('errorCode')}) {what}",
    )


# --- Redis ---------------------------------------------------------------------------------


def designed_ttls(settings: dict[str, str]) -> dict[str, float]:
    """The longest TTL (s) each transient key family is designed to have, under ``settings``
    (the chaos run's tuning); the sources are named beside each figure."""
    window = float(settings["ECHOTUNE_RESUME_WINDOW_S"])
    max_stream = float(settings["ECHOTUNE_GATEWAY_MAX_STREAM_S"])
    grace = float(settings.get("ECHOTUNE_KEY_GRACE_S", 60))  # common settings.py key_grace_s
    return {
        "per-request": max_stream + window + grace,  # gateway app.py: request_ttl_s
        "rate-limit": 60,  # gateway limits.py WINDOW_S
        "open-streams": 2 * window,  # gateway limits.py: lapse_s
        "breaker-window": float(settings["ECHOTUNE_BREAKER_WINDOW_S"]),  # common breaker.py
        "breaker-calls": CALLS_KEPT_MS / 1000,  # common breaker.py
        "live-stats": 600,  # common live_stats.py RETENTION_MIN
        "profile-cache": 60,  # worker settings.py profile_cache_s
        "gateway-wakeup": 3600,  # gateway chat/relay.py (a gateway killed before its stop)
        "listening-profile": float(settings.get("ECHOTUNE_WORKER_PROFILE_CACHE_S", 60)),
    }


def check_redis(history: History, jobs: int, findings: Findings) -> None:
    """Keys the run added are gone after their TTLs (or designed to stay, and bounded)."""
    audit = history.redis
    if "end" not in audit:
        findings.add("redis", None, "no snapshot of the keyspace after the run")
        return
    base, end = audit["baseline"]["keys"], audit["end"]["keys"]
    bounds = designed_ttls(history.load.get("tuning", {}))
    waited = bool(audit["end"].get("waited_for_ttls")) or audit.get("ttl_wait") == "full"
    for name, info in sorted(end.items()):
        family, ttl = info["family"], info["ttl_ms"]
        if name in base and family not in ("jobs-stream", "telemetry-stream"):
            continue
        if family in DESIGNED_TO_LIVE:
            maxlen = int(history.load.get("tuning", {}).get(TELEMETRY_MAXLEN, 1_000_000))
            _designed(name, info, base.get(name), jobs, maxlen, findings)
        elif ttl == -1:
            findings.add(
                "redis", None, f"{name} ({family}, {info['type']}) has no TTL: it never goes away"
            )
        elif ttl > bounds.get(family, 0) * 1000:
            findings.add(
                "redis",
                None,
                f"{name} ({family}) expires in {ttl / 1000:.0f} s, "
                f"longer than designed ({bounds.get(family, 0):.0f} s)",
            )
        elif family in LINGERING or not waited:
            findings.excuse(
                "redis",
                None,
                f"{name} ({family}) expires in {ttl / 1000:.0f} s "
                f"(designed: at most {bounds[family]:.0f} s; not waited for)",
            )
        else:
            findings.add(
                "redis",
                None,
                f"{name} ({family}) still present after the wait (TTL {ttl / 1000:.0f} s)",
            )


def _designed(
    name: str,
    info: dict[str, Any],
    before: dict[str, Any] | None,
    jobs: int,
    telemetry_maxlen: int,
    findings: Findings,
) -> None:
    """A key designed to live must still be bounded: the jobs stream drops acknowledged jobs,
    the telemetry stream keeps at most its MAXLEN (trimmed approximately: whole nodes)."""
    family, length = info["family"], info.get("length", 0)
    grown = length - (before or {}).get("length", 0)
    delta = info["bytes"] - (before or {}).get("bytes", 0)
    if family == "jobs-stream" and grown >= jobs > 0:
        findings.add(
            "redis",
            None,
            f"{name} retains all {jobs} jobs after they were acknowledged (+{grown} "
            f"entries, +{delta} bytes): memory does not return to the baseline",
        )
    elif family == "telemetry-stream" and length > telemetry_maxlen + APPROXIMATE_TRIM:
        findings.add(
            "redis",
            None,
            f"{name} holds {length} entries, beyond its MAXLEN {telemetry_maxlen}",
        )
    else:
        findings.excuse("redis", None, f"{name}: {DESIGNED_TO_LIVE[family]}")
