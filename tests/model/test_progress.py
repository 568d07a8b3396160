"""Progress reports: log lines at intervals off a terminal, the tqdm bar alone on one."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import make_data, run_fit, tiny_backbone  # noqa: E402

from dqe_cir_pipeline.model import progress as progress_module  # noqa: E402
from dqe_cir_pipeline.model.backbone import Backbone  # noqa: E402
from dqe_cir_pipeline.model.dqe import DQEConfig  # noqa: E402
from dqe_cir_pipeline.model.encode import encode_images, encode_queries  # noqa: E402
from dqe_cir_pipeline.model.extract import VitEncoder, extract_to_memory  # noqa: E402
from dqe_cir_pipeline.model.factory import build_model  # noqa: E402
from dqe_cir_pipeline.model.progress import Progress  # noqa: E402
from dqe_cir_pipeline.model.train_config import LoopConfig, TrainingConfig  # noqa: E402

#: ``epoch e/E: step s/S, R triplets/s, loss L, lr X, elapsed T, ETA T (run T)``
TRAIN_LINE = re.compile(
    r"epoch (\d+)/(\d+): step (\d+)/(\d+), ([\d.]+) triplets/s, loss ([\d.]+), "
    r"lr ([\d.e+-]+), elapsed ([\d:]+), ETA ([\d:]+) \(run ([\d:]+)\)$"
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _output(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> io.StringIO:
    """Send stderr (tqdm's stream) to a terminal-like stream or to a file-like one (as under
    nohup or a batch scheduler). Called in the test body: pytest's own capture resets
    ``sys.stderr`` between a fixture's setup and the test."""
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    torch.set_num_threads(1)
    return tiny_backbone(tmp_path_factory.mktemp("tiny"))


def _seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_intervals_with_rate_eta_and_the_rest_of_the_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _output(monkeypatch, terminal=False)
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    caplog.set_level(logging.INFO)
    with Progress(
        10,
        desc="epoch 1/2",
        unit="step",
        item_unit="triplets",
        log_every_s=5.0,
        log_first=True,
        later=10,
        later_s=7.0,
    ) as progress:
        for _ in range(10):
            clock.now += 2.0  # 2 s per step of 4 triplets
            progress.update(items=4, loss="0.5000")
    lines = _lines(caplog, progress_module.__name__)
    # the first step, then one line whenever 5 s have passed since the last
    assert [line.split(",")[0] for line in lines] == [
        "epoch 1/2: step 1/10",
        "epoch 1/2: step 4/10",
        "epoch 1/2: step 7/10",
        "epoch 1/2: step 10/10",
    ]
    # at step 4: 2 triplets/s, 6 steps left at 2 s each, then 10 steps and 7 s more
    assert lines[1] == (
        "epoch 1/2: step 4/10, 2.0 triplets/s, loss 0.5000, elapsed 00:08, ETA 00:12 (run 00:39)"
    )
    assert lines[-1].endswith("ETA 00:00 (run 00:27)")


def test_the_rate_is_smoothed_and_the_first_step_does_not_weigh_on_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _output(monkeypatch, terminal=False)
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    caplog.set_level(logging.INFO)
    progress = Progress(100, desc="x", unit="image", log_every_s=10.0, log_first=True)
    clock.now = 30.0  # slow start-up
    progress.update()
    for seconds in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5):
        clock.now += seconds
        progress.update()
    rates = [
        float(line.split(", ")[1].split()[0]) for line in _lines(caplog, progress_module.__name__)
    ]
    assert rates[0] == pytest.approx(1 / 30, abs=0.05)
    assert rates[1] == pytest.approx(1.0)  # not dragged down by the first step


def test_nothing_is_logged_when_off_or_on_another_rank(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _output(monkeypatch, terminal=False)
    caplog.set_level(logging.INFO)
    for kwargs in ({"log_every_s": 0.0}, {"log_every_s": 1e-9, "enabled": False}):
        with Progress(3, desc="x", unit="step", log_first=True, **kwargs) as progress:
            for _ in range(3):
                progress.update()
    assert not caplog.records


def test_a_terminal_gets_the_bar_and_no_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    terminal = _output(monkeypatch, terminal=True)
    caplog.set_level(logging.INFO)
    with Progress(3, desc="encode", unit="image", log_every_s=1e-9, log_first=True) as progress:
        for _ in range(3):
            progress.update(loss="1.0")
    assert not caplog.records
    assert "encode" in terminal.getvalue()


def test_training_logs_progress_lines_off_a_terminal(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _output(monkeypatch, terminal=False)
    caplog.set_level(logging.INFO)
    result = run_fit(backbone, None, epochs=2, log_every_s=1e-9)
    parsed = [TRAIN_LINE.match(line) for line in _lines(caplog, "dqe_cir_pipeline.model.train")]
    lines = [m.groups() for m in parsed if m]
    # 24 triplets in batches of 8: every step of both epochs
    assert [(e, s) for e, _, s, *_ in lines] == [
        (str(e), str(s)) for e in (1, 2) for s in (1, 2, 3)
    ]
    for _, epochs, _, steps, rate, _, lr, _, eta, run_eta in lines:
        assert (epochs, steps) == ("2", "3") and float(rate) > 0 and float(lr) > 0
        assert _seconds(run_eta) >= _seconds(eta)
    for epoch, record in enumerate(result.history):
        last = lines[3 * epoch + 2]
        # the last step's running mean is the epoch's loss; nothing left to do
        assert float(last[5]) == pytest.approx(record["train/loss"], abs=1e-4)
        assert float(last[6]) == pytest.approx(record["train/lr"], rel=1e-2)
        assert _seconds(last[8]) == 0
    # a few seconds of training cannot be hours away
    assert all(_seconds(line[9]) < 600 for line in lines)


def test_training_on_a_terminal_logs_no_progress_lines(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    terminal = _output(monkeypatch, terminal=True)
    caplog.set_level(logging.INFO)
    run_fit(backbone, None, epochs=1, log_every_s=1e-9)
    messages = _lines(caplog, "dqe_cir_pipeline.model.train")
    assert messages and not any(TRAIN_LINE.match(m) for m in messages)
    assert "epoch 1/1" in terminal.getvalue()  # the bar


def test_the_log_interval_is_not_part_of_the_recipe() -> None:
    quiet = TrainingConfig(loop=LoopConfig(log_every_s=0.0))
    assert quiet.fingerprint(32) == TrainingConfig().fingerprint(32)
    with pytest.raises(ValueError, match="log_every_s"):
        LoopConfig(log_every_s=-1.0)


def test_encoding_logs_its_progress(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _output(monkeypatch, terminal=False)
    monkeypatch.setattr(progress_module, "DEFAULT_LOG_EVERY_S", 1e-9)
    caplog.set_level(logging.INFO)
    data, feats, _ = make_data(n_pool=10, n_query=5)
    model = build_model(backbone, DQEConfig(), device="cpu")
    encode_images(model, feats, data.pool_ids, batch_size=4)
    encode_queries(
        model, feats, backbone.tokenizer, data.reference_ids, data.caption_eval, batch_size=4
    )
    lines = _lines(caplog, "dqe_cir_pipeline.model.encode")
    assert [line.split(",")[0] for line in lines] == [
        "encode gallery: image 4/10",
        "encode gallery: image 8/10",
        "encode gallery: image 10/10",
        "encode queries: query 4/5",
        "encode queries: query 5/5",
    ]
    assert all(re.search(r", [\d.]+ (images|queries)/s, .* ETA [\d:]+$", x) for x in lines)


def test_extraction_logs_images_per_second_and_eta_across_calls(
    backbone: Backbone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _output(monkeypatch, terminal=False)
    monkeypatch.setattr(progress_module, "DEFAULT_LOG_EVERY_S", 1e-9)
    caplog.set_level(logging.INFO)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    encoder = VitEncoder(backbone, torch.device("cpu"), batch_size=2, amp_dtype=None)
    features = extract_to_memory(encoder, [f"i{i}" for i in range(5)], paths, shard=3)
    assert features.get(["i4"]).shape[0] == 1
    lines = _lines(caplog, "dqe_cir_pipeline.model.extract")
    # one progress over both calls (shards of 3 and 2), a line per batch of 2 or fewer
    assert [line.split(",")[0] for line in lines] == [
        "extract: image 2/5",
        "extract: image 3/5",
        "extract: image 5/5",
    ]
    assert all(re.search(r"[\d.]+ images/s, elapsed [\d:]+, ETA [\d:]+$", x) for x in lines)
