"""Bulk annotation jobs over Kafka: submit (jobs.py), workers (worker.py, deployment.py), CLI (cli.py)."""
