"""The supervisor's side of a migration: the service, the nine steps, checkpoints and rollback."""
