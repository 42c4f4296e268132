"""The durable job queue: SQLite in WAL mode, with leases, retries and a dead state."""

from node.queue.store import Job, JobState, JobStore

__all__ = ["Job", "JobState", "JobStore"]
