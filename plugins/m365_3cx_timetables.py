"""Registers the sync's timetables with Airflow (the scheduler and dag processor deserialize DAGs with them).

See :mod:`m365_3cx.airflow.timetables`: trigger timetables that never run a stale tick on unpause.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from m365_3cx.airflow.timetables import FreshCronTriggerTimetable, FreshDeltaTriggerTimetable


class M365ThreeCXTimetablesPlugin(AirflowPlugin):
    name = "m365_3cx_timetables"
    timetables = [FreshCronTriggerTimetable, FreshDeltaTriggerTimetable]
