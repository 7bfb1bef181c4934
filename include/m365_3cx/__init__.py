"""m365-3cx-sync: keep a 3CX V20 phone system in step with Microsoft 365.

The package is a pure domain core (no Airflow imports) plus a thin Airflow shell
in :mod:`m365_3cx.airflow`.
"""

__version__ = "0.1.0"
