"""Graph change notifications: the receiver's checks and the subscription lifecycle (no Airflow here)."""
