"""TensorBoard: an account-free dashboard with zoom and run comparison, beside wandb.

`log.tensorboard = true` writes RUN_DIR/tensorboard/ (event files) on rank 0; view it with
`tensorboard --logdir RUN_DIR/tensorboard` (or `--logdir runs/` to compare runs). The numbers are
those of metrics.jsonl (every numeric field of a record, by its metrics.jsonl name, against the
step; the training tokens as their own scalar) and the text samples. It needs the `tensorboard`
package (the `tensorboard` extra), imported only when switched on. Like the live report, a
dashboard is never worth a training run: after start-up, a failing write warns once and the run
goes on without it. A resume appends to the same directory (TensorBoard shows the re-logged
steps of a resume over the earlier ones).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from gpt2repro.errors import UserError

TB_DIR = "tensorboard"  # under the run directory


class TensorBoardLogger:
    """Scalars and text samples into RUN_DIR/tensorboard/ (rank 0, `log.tensorboard`)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer: Any = None
        self.warned = False
        if not enabled:
            return
        try:
            # optional (the `tensorboard` extra): torch's writer needs the tensorboard package
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "log.tensorboard=true needs tensorboard: pip install 'gpt2repro[tensorboard]' "
                "(or set --log.tensorboard=false)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR))

    def _guarded(self, what: str, fn: Any, *args: Any) -> None:
        if self.writer is None:
            return
        try:
            fn(*args)
        except Exception as e:  # a dashboard is never worth a lost training run
            self.writer = None
            if not self.warned:
                self.warned = True
                print(
                    f"warning: tensorboard {what} failed ({type(e).__name__}: {e}); training "
                    "goes on without it (switch it off with --log.tensorboard=false)",
                    file=sys.stderr,
                    flush=True,
                )

    def log(self, record: dict[str, Any]) -> None:
        """Every finite number of a metrics.jsonl record, against its step."""

        def write() -> None:
            step = int(record["step"])
            for key, value in record.items():
                if key in ("step", "time", "event") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

        self._guarded("logging", write)

    def log_sample(self, step: int, text: str) -> None:
        self._guarded("a sample", lambda: self.writer.add_text("sample", text, step))

    def finish(self) -> None:
        if self.writer is not None:
            self._guarded("closing", self.writer.close)
            self.writer = None
