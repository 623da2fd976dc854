"""The optional TensorBoard writer: metrics.jsonl's numbers and samples, read back by
TensorBoard's own event reader; a failing write warns once and never stops the run."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from gpt2repro.errors import UserError
from gpt2repro.tensorboard_log import TB_DIR, TensorBoardLogger


def test_scalars_and_samples_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path, enabled=True)
    tb.log({"step": 10, "tokens": 5120, "loss": 3.5, "lr": 6e-4, "mfu": None, "time": 1.0})
    tb.log({"step": 20, "tokens": 10240, "loss": 3.25, "grad_norm": float("nan")})
    tb.log({"step": 20, "val_loss": 3.4, "event": None})
    tb.log_sample(20, "Hello, I'm a language model,\nand")
    tb.finish()
    acc = EventAccumulator(str(tmp_path / TB_DIR), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert set(scalars) == {"tokens", "loss", "lr", "val_loss"}  # None, NaN and time left out
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(10, 3.5), (20, 3.25)]
    text = acc.Tensors("sample/text_summary")[0]
    assert text.step == 20 and b"language model" in text.tensor_proto.string_val[0]


def test_off_writes_nothing_and_needs_nothing(tmp_path: Path) -> None:
    tb = TensorBoardLogger(tmp_path, enabled=False)
    tb.log({"step": 1, "loss": 1.0})
    tb.log_sample(1, "x")
    tb.finish()
    assert not (tmp_path / TB_DIR).exists()


def test_missing_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(UserError, match=r"pip install 'gpt2repro\[tensorboard\]'"):
        TensorBoardLogger(tmp_path, enabled=True)


def test_a_failing_write_warns_once_and_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    tb = TensorBoardLogger(tmp_path, enabled=True)

    def boom(*_: object) -> None:
        raise OSError(28, "No space left on device")

    tb.writer.add_scalar = boom
    err = io.StringIO()
    with redirect_stderr(err):
        tb.log({"step": 1, "loss": 1.0})
        tb.log({"step": 2, "loss": 1.0})
        tb.log_sample(2, "x")
        tb.finish()
    assert err.getvalue().count("warning: tensorboard") == 1
    assert (
        "No space left on device" in err.getvalue() and "--log.tensorboard=false" in err.getvalue()
    )


def test_the_run_log_writes_tensorboard_when_asked(tmp_path: Path) -> None:
    """`log.tensorboard=true`: RunLog sends records and samples to RUN_DIR/tensorboard/; off by
    default; a run that asks for it without the package is refused before anything is built."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gpt2repro import metrics, preflight
    from gpt2repro.config import load_config

    cfg, _ = load_config(["--log.tensorboard=true", f"--run.dir={tmp_path}"])
    log = metrics.RunLog(tmp_path, cfg, is_main=True)
    log.record({"step": 5, "tokens": 50, "val_loss": 4.5})
    log.record({"event": "done", "step": 5, "tokens": 50}, wandb=False)
    log.sample(5, 50, "text")
    log.close()
    acc = EventAccumulator(str(tmp_path / TB_DIR))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["tokens", "val_loss"]
    default, _ = load_config([f"--run.dir={tmp_path / 'other'}"])
    assert default.log.tensorboard is False
    (tmp_path / "other").mkdir()
    metrics.RunLog(tmp_path / "other", default, is_main=True).close()
    assert not (tmp_path / "other" / TB_DIR).exists()
    preflight.check_tensorboard(cfg)  # installed: fine


def test_asking_for_tensorboard_without_it_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from gpt2repro import preflight
    from gpt2repro.config import load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    cfg, _ = load_config(["--log.tensorboard=true"])
    with pytest.raises(UserError, match=r"log.tensorboard=true needs tensorboard: pip install"):
        preflight.check_tensorboard(cfg)
