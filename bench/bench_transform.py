"""Benchmark: transform + plan for 10,000 users.

Prints wall time of each step (without tracing) and the peak Python memory
(``tracemalloc``, second pass). Scenario: 10,000 staged users, 9,000 of them
already mapped and present in 3CX, 5 % with changed fields, 2 % disabled,
3 % bad phone numbers, 100 unmanaged extensions; pool policy.

Run: ``.venv/bin/python bench/bench_transform.py [n_users]``
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from m365_3cx.reconcile.plan import PlanParams, plan_extensions
from m365_3cx.transform.extensions import ExtensionParams, desired_extensions
from m365_3cx.transform.numbering import NumberingPolicy
from m365_3cx.transform.phones import to_e164

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def build(n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rnd = random.Random(42)
    users, maps, exts = [], [], []
    for i in range(n):
        uid = f"{i:08d}-0000-4000-8000-000000000000"
        first, last = rnd.choice(["Ann", "Bob", "Zoë", "José", "Li"]), f"Name{i}"
        mobile = f"+1 650 {200 + i // 10000:03d} {i % 10000:04d}" if rnd.random() > 0.03 else "garbage"
        users.append(
            {
                "user_id": uid,
                "user_principal_name": f"user{i}@contoso.example",
                "display_name": f"{first} {last}",
                "given_name": first,
                "surname": last,
                "mail": f"User{i}@Contoso.example",
                "mobile_phone": mobile,
                "business_phones": [f"+1 415 555 {i % 10000:04d}"],
                "account_enabled": rnd.random() > 0.02,
                "user_type": "Member",
                "usage_location": rnd.choice(["US", "US", "GB", None]),
                "department": None,
                "job_title": None,
                "extension_attributes": {"extensionAttribute1": None},
                "in_scope": True,
                "deleted": False,
                "first_seen_at": NOW - timedelta(days=rnd.randint(0, 900)),
            }
        )
        if i < int(n * 0.9):
            number, tid = str(10000 + i), i + 1
            maps.append(
                {
                    "user_id": uid,
                    "number": number,
                    "threecx_id": tid,
                    "status": "active",
                    "assigned_at": NOW,
                    "released_at": None,
                    "adopted": False,
                }
            )
            changed = rnd.random() < 0.05
            exts.append(
                {
                    "threecx_id": tid,
                    "number": number,
                    "first_name": first,
                    "last_name": last + ("x" if changed else ""),
                    "display_name": "",
                    "email": f"user{i}@contoso.example",
                    "mobile": to_e164(mobile, None, "US").e164,
                    "outbound_caller_id": None,
                    "enabled": True,
                }
            )
    for j in range(100):
        exts.append(
            {
                "threecx_id": 10**6 + j,
                "number": str(30000 + j),
                "first_name": "Hand",
                "last_name": "",
                "display_name": "",
                "email": None,
                "mobile": None,
                "outbound_caller_id": None,
                "enabled": True,
            }
        )
    return pd.DataFrame(users), pd.DataFrame(maps), pd.DataFrame(exts)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    users, mapping, pbx = build(n)
    params = ExtensionParams(numbering=NumberingPolicy(policy="pool", pool_first="10000", pool_last="39999"))
    plan_params = PlanParams()
    labels = dict(zip(users["user_id"], users["user_principal_name"], strict=True))

    def transform() -> Any:
        return desired_extensions(users, mapping, pbx, params, NOW)

    def plan(desired: Any) -> Callable[[], Any]:
        return lambda: plan_extensions(desired.frame, mapping, pbx, plan_params, labels=labels)

    t0 = time.perf_counter()
    desired = transform()
    t1 = time.perf_counter()
    result = plan(desired)()
    t2 = time.perf_counter()

    tracemalloc.start()
    transform()
    _, peak_transform = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    plan(desired)()
    _, peak_plan = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    actions: dict[str, int] = {}
    for c in result.changes:
        actions[c.action] = actions.get(c.action, 0) + 1
    print(f"users: {n}, mapped: {len(mapping)}, 3CX extensions: {len(pbx)}")
    print(f"transform (desired_extensions): {t1 - t0:.3f} s, peak {peak_transform / 2**20:.1f} MiB")
    print(f"plan (plan_extensions):         {t2 - t1:.3f} s, peak {peak_plan / 2**20:.1f} MiB")
    print(f"total: {t2 - t0:.3f} s")
    print(
        f"new numbers: {len(desired.new_assignments)}, notes: {len(desired.notes) + len(result.notes)}, "
        f"changes: {dict(sorted(actions.items()))}"
    )


if __name__ == "__main__":
    main()
