"""``affstream corpus``: annotate a whole folder (or list) of videos on one machine or
a Ray cluster, resumable after any crash. The outputs are the state (:mod:`.state`),
which files are videos is probed (:mod:`.inputs`), the work is done by N local workers
(:mod:`.engine`) or by Ray Data actors (:mod:`.ray_engine`, imported only when used)."""

from .engine import CorpusResult, plan_workers, run_corpus
from .inputs import STATUS_DONE, STATUS_FAILED, STATUS_NOT_VIDEO, STATUS_SKIPPED, CorpusItem

__all__ = ["STATUS_DONE", "STATUS_FAILED", "STATUS_NOT_VIDEO", "STATUS_SKIPPED", "CorpusItem", "CorpusResult",
           "plan_workers", "run_corpus"]
