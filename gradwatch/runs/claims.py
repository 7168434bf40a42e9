"""Claims: each alert delivered by one ``gradwatch monitor`` when several watch one experiment.

    claims = Claims(client, monitor_id="host:pid:ab12")
    generation = claims.take(run, "loss_divergence", 57)   # None: another monitor has it
    ... deliver ...; or, when giving up: claims.release(run_id, "loss_divergence", 57, generation)

MLflow has no compare-and-set on tags, but a run's params are write-once: logging a param again
with another value is refused, and on a database-backed store (sqlite, PostgreSQL, MySQL) the
params table's primary key makes that check atomic, so of two monitors writing
``gradwatch.monitor.claim.<rule>.<step>.<generation>`` at once exactly one value lands. The
monitor whose id landed delivers the alert.

A monitor that stops with a claimed alert undelivered (``--once`` after a failed delivery,
SIGTERM) releases it: tag ``gradwatch.monitor.released.<rule>.<step>`` = the generation, and the
next monitor claims the next generation. A monitor killed before it could release leaves its
claim in place: that alert is never sent twice, but it may not be sent at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gradwatch.schema import PARAM_MONITOR_CLAIM, TAG_MONITOR_ALERTED, TAG_MONITOR_RELEASED

__all__ = ["ClaimError", "Claims", "claim_param"]


class ClaimError(Exception):
    """The claim could not be written (not refused: the server did not take it)."""


def _safe(rule: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", rule)[:200]


def claim_param(rule: str, step: int, generation: int | str) -> str:
    """The param a monitor writes to claim alert ``rule`` at ``step`` (MLflow's key rules).

    claim_param("nan", 7, 0)  # 'gradwatch.monitor.claim.nan.7.0'
    """
    return f"{PARAM_MONITOR_CLAIM}{_safe(rule)}.{step}.{generation}"


def _int(text: object, default: int = -1) -> int:
    try:
        return int(str(text))
    except ValueError:
        return default


class Claims:
    """Takes and releases alert claims in the runs' params and tags; see the module doc."""

    def __init__(self, client: Any, monitor_id: str) -> None:
        self.client = client
        self.monitor_id = monitor_id

    def next_generation(
        self, params: Mapping[str, str], tags: Mapping[str, str], rule: str, step: int
    ) -> int | None:
        """The generation this monitor may claim (or holds), None when the alert is taken."""
        if _int(tags.get(TAG_MONITOR_ALERTED + rule)) >= step:
            return None  # delivered already
        prefix = claim_param(rule, step, "")
        held = {
            int(key[len(prefix) :]): holder
            for key, holder in params.items()
            if key.startswith(prefix) and key[len(prefix) :].isdigit()
        }
        if not held:
            return 0
        last = max(held)
        if held[last] == self.monitor_id:
            return last
        released = _int(tags.get(f"{TAG_MONITOR_RELEASED}{_safe(rule)}.{step}"))
        return last + 1 if released >= last else None

    def take(self, run: Any, rule: str, step: int) -> int | None:
        """Claim alert ``rule`` at ``step`` of ``run`` (a run from ``search_runs``: its params
        and tags may be a poll old). The generation claimed, or None when another monitor holds
        it or delivered it. Raises :class:`ClaimError` when the claim could not be written."""
        run_id = run.info.run_id
        params, tags = run.data.params, run.data.tags
        for _ in range(3):
            generation = self.next_generation(params, tags, rule, step)
            if generation is None:
                return None
            key = claim_param(rule, step, generation)
            if params.get(key) == self.monitor_id:
                return generation
            try:
                self.client.log_param(run_id, key, self.monitor_id)
                return generation
            except Exception as err:  # noqa: BLE001 - a refusal comes in several kinds
                try:
                    fresh = self.client.get_run(run_id).data
                except Exception:  # noqa: BLE001
                    raise ClaimError(str(err)) from None
                if key not in fresh.params:
                    raise ClaimError(str(err)) from None
                params, tags = fresh.params, fresh.tags  # refused: someone was first; look again
        return None

    def release(self, run_id: str, rule: str, step: int, generation: int) -> None:
        """Hand a claimed, undelivered alert on to the next monitor."""
        self.client.set_tag(run_id, f"{TAG_MONITOR_RELEASED}{_safe(rule)}.{step}", str(generation))
