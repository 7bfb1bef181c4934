"""staging layer of m365_3cx."""
