"""Async jobs and offline batch scoring: a durable job store, the job runner, the jobs HTTP API and
the OpenAI Batch API (see ``ladle.jobs.routes``), and the scoring that ``ladle batch`` shares.

Every job request is an ``InferenceRequest`` with ``protocol="job"`` and ``Priority.LOW`` on the
one admission pipeline, so batch work uses the capacity online traffic leaves.
"""

from __future__ import annotations

from .records import FORMATS, InputFileError, RecordChunk, read_chunks
from .routes import job_routes
from .scoring import PredictScorer, ScoredChunk
from .service import JobService
from .store import JobRecord, JobStore

__all__ = [
    "FORMATS",
    "InputFileError",
    "JobRecord",
    "JobService",
    "JobStore",
    "PredictScorer",
    "RecordChunk",
    "ScoredChunk",
    "job_routes",
    "read_chunks",
]
