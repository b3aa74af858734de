"""Which snapshots a keep-policy keeps, and why (pure: no I/O).

The same meaning as restic's `forget --keep-*`: rules are independent and ORed; `last N`
keeps the N newest; `hourly N` keeps the newest snapshot of each of the N most recent hours
that have one (periods without a snapshot do not count), and likewise by day, ISO week, month
and year, in local time; when a rule cannot fill its count, the oldest snapshot is kept for it.
Snapshots are grouped by host and sources, and the newest of each group is always kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from watcher.config import Retention
from watcher.snapshot import Snapshot

BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


@dataclass
class Decision:
    snapshot: Snapshot
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def _group(snapshot: Snapshot) -> tuple[str, tuple[str, ...]]:
    return snapshot.host, tuple(sorted(snapshot.sources))


def decide(snapshots: list[Snapshot], policy: Retention) -> list[Decision]:
    """One decision per snapshot, oldest first; with no rule set every snapshot is kept."""
    if not policy.is_set():
        return [Decision(snapshot, ["no retention policy"]) for snapshot in snapshots]
    groups: dict[tuple[str, tuple[str, ...]], list[Decision]] = {}
    for snapshot in sorted(snapshots, key=lambda s: (s.time, s.id)):
        groups.setdefault(_group(snapshot), []).append(Decision(snapshot))
    for decisions in groups.values():
        newest_first = list(reversed(decisions))
        newest_first[0].reasons.append("newest")
        if policy.last:
            for decision in newest_first[: policy.last]:
                decision.reasons.append("last")
        for rule, bucket in BUCKETS.items():
            count = getattr(policy, rule) or 0
            seen: set[tuple[int, ...]] = set()
            for decision in newest_first:
                if count <= 0:
                    break
                key = bucket(decision.snapshot.time.astimezone())
                if key not in seen:
                    seen.add(key)
                    decision.reasons.append(rule)
                    count -= 1
            if count > 0 and rule not in newest_first[-1].reasons:
                newest_first[-1].reasons.append(f"oldest ({rule})")
    ordered = [decision for decisions in groups.values() for decision in decisions]
    return sorted(ordered, key=lambda d: (d.snapshot.time, d.snapshot.id))
