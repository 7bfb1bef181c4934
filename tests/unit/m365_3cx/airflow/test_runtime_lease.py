"""The task-side lease helpers: which step takes, renews, releases or parks a feature."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from m365_3cx.airflow.runtime import feature_lease, park_feature, release_feature, wrote_anything
from m365_3cx.errors import FatalError, RetriableError
from m365_3cx.settings import Settings
from m365_3cx.staging import lease
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema

SETTINGS = Settings.from_mapping({"guards": {"lease_wait_seconds": 0}})


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'staging.db'}")
    create_schema(engine)
    return engine


def _holder(engine: sa.Engine, feature: str) -> str | None:
    return lease.holder_of(engine, feature, dt.datetime.now(dt.UTC))


def test_snapshot_takes_plan_renews_apply_releases(engine: sa.Engine) -> None:
    with feature_lease(engine, "phonebook", "full/1", "snapshot", SETTINGS):
        assert _holder(engine, "phonebook") == "full/1"
    with pytest.raises(lease.FeatureBusyError, match="full/1"), \
            feature_lease(engine, "phonebook", "delta/2", "snapshot", SETTINGS):
        pass
    with feature_lease(engine, "phonebook", "full/1", "plan", SETTINGS):
        pass
    with feature_lease(engine, "phonebook", "full/1", "apply", SETTINGS):
        counts = {"created": 0, "updated": 2, "deleted": 0}
    release_feature(engine, "phonebook", "full/1", counts)
    assert _holder(engine, "phonebook") is None
    assert lease.acquire(engine, "phonebook", "delta/2", now=lambda: dt.datetime.now(dt.UTC)).generation == 1


def test_fatal_error_releases_retriable_error_keeps(engine: sa.Engine) -> None:
    with pytest.raises(RetriableError), feature_lease(engine, "extensions", "full/1", "snapshot", SETTINGS):
        raise RetriableError("3CX outage")
    assert _holder(engine, "extensions") == "full/1"  # the task's retry goes on with it
    with pytest.raises(FatalError), feature_lease(engine, "extensions", "full/1", "plan", SETTINGS):
        raise FatalError("bad settings")
    assert _holder(engine, "extensions") is None


def test_parked_for_approval_frees_the_feature(engine: sa.Engine) -> None:
    with feature_lease(engine, "extensions", "full/1", "snapshot", SETTINGS):
        pass
    assert park_feature(engine, "extension", "full/1") and _holder(engine, "extensions") is None
    with feature_lease(engine, "extensions", "delta/2", "snapshot", SETTINGS):
        pass
    release_feature(engine, "extensions", "delta/2", {"created": 1})
    with pytest.raises(lease.StalePlanError), feature_lease(engine, "extensions", "full/1", "apply", SETTINGS):
        pass


@pytest.mark.parametrize(("counts", "wrote"), [
    ({"created": 0, "updated": 0, "deleted": 0, "skipped": 4}, False),
    ({"switched": 1}, True), ({"disabled": 1}, True), ({"enabled": False}, False), (None, False),
])
def test_wrote_anything(counts: object, wrote: bool) -> None:
    assert wrote_anything(counts) is wrote
