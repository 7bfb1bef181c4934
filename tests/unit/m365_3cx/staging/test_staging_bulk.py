from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.schema import delta_state, stg_contacts
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


def _links(conn: Connection) -> dict[str, tuple[str, str | None]]:
    return {r.resource: (r.delta_link, r.run_key) for r in conn.execute(select(delta_state))}


def test_upsert_repeated_key_ends_as_one_row_after_the_other(engine: Engine) -> None:
    """PostgreSQL sends a batch as one multi-row statement (which may touch a row only once): the outcome of
    a key given twice is still that of the rows applied in order."""
    def row(resource: str, link: str, run_key: str) -> dict[str, object]:
        return {"resource": resource, "delta_link": link, "updated_at": T0, "run_key": run_key}

    with engine.begin() as conn:
        upsert(conn, delta_state, [row("old", "0", "r0")], ["resource"])
        upsert(conn, delta_state, [row("new", "1", "r1"), row("old", "2", "r1"), row("new", "3", "r2"),
                                   row("old", "4", "r2")], ["resource"], ["delta_link"])
        assert _links(conn) == {"old": ("4", "r0"), "new": ("3", "r1")}
        upsert(conn, delta_state, [row("new", "5", "r5"), row("new", "6", "r6")], ["resource"])
        assert _links(conn)["new"] == ("6", "r6")
        upsert(conn, delta_state, [row("x", "7", "r7"), row("x", "8", "r8"), row("new", "9", "r9")], ["resource"],
               [])
        assert _links(conn) == {"old": ("4", "r0"), "new": ("6", "r6"), "x": ("7", "r7")}
        # more rows than one batch, a key repeated across batches
        many = [row(f"k{i % 700}", str(i), "rm") for i in range(1_400)]
        assert upsert(conn, delta_state, many, ["resource"]) == 1_400
        got = _links(conn)
        assert len(got) == 703 and got["k0"] == ("700", "rm") and got["k699"] == ("1399", "rm")


def test_upsert_round_trips_json_datetimes_and_column_defaults(engine: Engine) -> None:
    row = {"owner_id": "u1", "contact_id": "c1", "source": "personal", "folder_id": None, "display_name": "Ann 'O\" %s",
           "business_phones": ["+1 555 0100", "%(x)s"], "home_phones": [], "email_addresses": None,
           "categories": ["ä", "🙂"], "row_hash": "h", "deleted": True, "first_seen_at": T0, "updated_at": T1}
    with engine.begin() as conn:
        upsert(conn, stg_contacts, [row], ["owner_id", "contact_id"])
        got = conn.execute(select(stg_contacts)).mappings().one()
        assert {k: got[k] for k in row} == row
        assert conn.execute(select(stg_contacts.c.email_addresses.is_(None))).scalar() is True
        # "deleted" not given: its Python-side default applies, as SQLAlchemy's INSERT would do
        upsert(conn, stg_contacts, [{k: v for k, v in row.items() if k != "deleted"} | {"contact_id": "c2"}],
               ["owner_id", "contact_id"])
        assert conn.execute(select(stg_contacts.c.deleted).where(stg_contacts.c.contact_id == "c2")).scalar() is False
        conn.execute(stg_contacts.delete().where(stg_contacts.c.contact_id == "c2"))
        upsert(conn, stg_contacts, [{**row, "display_name": None, "home_phones": ["1"]}], ["owner_id", "contact_id"],
               ["display_name", "home_phones"])
        got = conn.execute(select(stg_contacts)).mappings().one()
        assert (got["display_name"], got["home_phones"]) == (None, ["1"])
        assert got["business_phones"] == row["business_phones"]
