from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.schema import delta_state
from tests.unit.m365_3cx.staging.staging_rows import T0, T1

# ------------------------------------------------------------------ upsert


def test_upsert_semantics(engine: Engine) -> None:
    with engine.begin() as conn:
        assert upsert(conn, delta_state, [], ["resource"]) == 0
        upsert(
            conn, delta_state, [{"resource": "a", "delta_link": "1", "updated_at": T0, "run_key": "r0"}], ["resource"]
        )
        upsert(
            conn,
            delta_state,
            [
                {"resource": "a", "delta_link": "2", "updated_at": T1, "run_key": "r1"},
                {"resource": "b", "delta_link": "3", "updated_at": T1, "run_key": "r1"},
            ],
            ["resource"],
            ["delta_link"],
        )
        got = {r.resource: (r.delta_link, r.run_key, r.updated_at) for r in conn.execute(select(delta_state))}
        assert got == {"a": ("2", "r0", T0), "b": ("3", "r1", T1)}
        # DO NOTHING
        upsert(conn, delta_state, [{"resource": "a", "delta_link": "9", "updated_at": T1}], ["resource"], [])
        assert conn.execute(select(delta_state.c.delta_link).where(delta_state.c.resource == "a")).scalar() == "2"
        with pytest.raises(ValueError, match="unknown column"):
            upsert(conn, delta_state, [{"resource": "a", "nope": 1}], ["resource"])
        with pytest.raises(ValueError, match="same keys"):
            upsert(conn, delta_state, [{"resource": "a"}, {"delta_link": "x"}], ["resource"])


def test_upsert_batches_many_rows(engine: Engine) -> None:
    data = [{"resource": f"r{i}", "delta_link": "x", "updated_at": T0} for i in range(1_234)]
    with engine.begin() as conn:
        assert upsert(conn, delta_state, data, ["resource"]) == 1_234
        assert len(conn.execute(select(delta_state.c.resource)).all()) == 1_234
