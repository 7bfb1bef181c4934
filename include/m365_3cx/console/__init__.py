"""The ops console: what the Airflow plugin ``plugins/m365_3cx_console.py`` shows.

:mod:`.queries` reads staging (pure SQLAlchemy, no Airflow), :mod:`.settings_view` explains
where the settings come from, :mod:`.render` turns both into HTML with Jinja2 templates.
"""
