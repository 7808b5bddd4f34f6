"""Where log records go: the console (rlvr's own messages and anyone's errors) and ``<output_dir>/train.log`` (everything)."""

from __future__ import annotations

import logging
import os
import sys

LOG_NAME = "train.log"
_CONSOLE_FORMAT = "%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"


def rank_of_process() -> int:
    return int(os.environ.get("RANK", "0") or 0)


class _ConsoleFilter(logging.Filter):
    """The console gets rlvr's own messages (INFO on rank 0, WARNING elsewhere) and errors from
    anyone; library chatter (FutureWarnings, generation-flag notices, accelerate's INFO lines
    at each checkpoint) goes to the log file only."""

    def __init__(self, rank: int):
        super().__init__()
        self.own_level = logging.INFO if rank == 0 else logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "rlvr" or record.name.startswith(("rlvr.", "__main__"))
        return record.levelno >= (self.own_level if own else logging.ERROR)


class _Stderr(logging.StreamHandler):
    """A console handler writing to whatever ``sys.stderr`` is when a record comes, not the
    stream that was there at setup: a redirect or a test harness may have replaced and closed
    that one since (logging would then print "--- Logging error ---" and a traceback)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


def setup_logging(log_file: str | None = None) -> None:
    """Console logging as above; with ``log_file``, everything at INFO and above also goes there."""
    rank = rank_of_process()
    root = logging.getLogger()
    fmt = logging.Formatter(_CONSOLE_FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    if not any(getattr(h, "_rlvr_console", False) for h in root.handlers):
        console = _Stderr()
        console.setFormatter(fmt)
        console.addFilter(_ConsoleFilter(rank))
        console._rlvr_console = True
        root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn (FutureWarning & co.) -> logger "py.warnings"
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if log_file is not None and not any(getattr(h, "_rlvr_file", None) == log_file for h in root.handlers):
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8", delay=False)
        handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT.format(rank=rank), datefmt="%Y-%m-%d %H:%M:%S"))
        handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        handler._rlvr_file = log_file
        root.addHandler(handler)
    if "transformers" in sys.modules or log_file is not None:
        # transformers logs through its own stderr handler unless told to propagate to ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards": not what matters
