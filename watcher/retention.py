"""Which snapshots a keep-policy keeps, and why (pure: no I/O).

The same meaning as restic's `forget --keep-*`: rules are independent and ORed; `last N`
keeps the N newest; `hourly N` keeps the newest snapshot of each of the N most recent hours
that have one (periods without a snapshot do not count), and likewise by day, ISO week, month
and year, in local time; when a rule cannot fill its count, the oldest snapshot is kept for it.
Snapshots are grouped by host and sources, and the newest of each group is always kept.

A snapshot's time is only what its host's clock said. One dated in the future (beyond the clock skew
hosts may have) would otherwise be the newest for as long as that future lasts, and push every new
snapshot out: it is kept, with its own reason, and takes no place in any rule; once its time has come
it is a snapshot like the others. The snapshots a run just saved (`protected`) are always kept, and
so is, for each source the newest snapshot holds incomplete (an unmounted disk), the newest snapshot
that holds it whole.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watcher.config import Retention
from watcher.snapshot import Snapshot, dated_in_future

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


def decide(snapshots: list[Snapshot], policy: Retention, *, protected: Collection[str] = (),
           now: datetime | None = None) -> list[Decision]:
    """One decision per snapshot, oldest first; with no rule set every snapshot is kept."""
    if not policy.is_set():
        return [Decision(snapshot, ["no retention policy"]) for snapshot in snapshots]
    now = now or datetime.now(UTC)
    groups: dict[tuple[str, tuple[str, ...]], list[Decision]] = {}
    future: list[Decision] = []
    for snapshot in sorted(snapshots, key=lambda s: (s.time, s.id)):
        if dated_in_future(snapshot, now):
            future.append(Decision(snapshot, ["dated in the future"]))
        else:
            groups.setdefault(_group(snapshot), []).append(Decision(snapshot))
    for decisions in groups.values():
        _apply_rules(list(reversed(decisions)), policy)
        _keep_last_complete(list(reversed(decisions)))
    ordered = [decision for decisions in groups.values() for decision in decisions] + future
    for decision in ordered:
        if decision.snapshot.id in protected and not decision.keep:
            decision.reasons.append("just saved")
    return sorted(ordered, key=lambda d: (d.snapshot.time, d.snapshot.id))


def _keep_last_complete(newest_first: list[Decision]) -> None:
    """For each source the newest snapshot holds incomplete (gone, unreadable, or emptied: an
    unmounted disk), keep the newest snapshot that holds it whole, whatever the rules say: it may
    be the last copy of that source's files."""
    missing = set(newest_first[0].snapshot.incomplete.sources)
    for decision in newest_first[1:]:
        if not missing:
            return
        found = missing - set(decision.snapshot.incomplete.sources)
        for source in sorted(found):
            decision.reasons.append(f"last whole copy of {source}")
        missing -= found


def _apply_rules(newest_first: list[Decision], policy: Retention) -> None:
    """The reasons each snapshot of one group is kept for."""
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
