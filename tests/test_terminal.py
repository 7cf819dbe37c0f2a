"""The progress channel to the build's terminal, the quiet kernel, and the build plan.

The channel has two ends: `cvae_utils.progress` logs the lines, and the book's build
(``book/_ext``: ``book_terminal.py``, installed in each kernel by ``book_kernel.py``) appends
them to the file that it relays to its terminal.
"""
from __future__ import annotations

import logging
import sys
import threading

import pytest

from cvae_utils import (BaselineConfig, CVAEConfig, make_quadrant_data, train_baseline,
                        trained_baseline, tutorial_config)
import book_terminal as terminal  # book/_ext, on sys.path from tests/conftest.py
from book_kernel import TRANSPORT_WARNING, DropTransportWarning
from book_plan import TYPICAL_STOP, build_plan, needs_of
from cvae_utils import progress
from cvae_utils.cache import checkpoint_path, model_key
from cvae_utils.config import Budget

SMALL = tutorial_config().replace(
    hidden_1=32, hidden_2=16, z_dim=4, batch_size=16, patience=5,
    baseline=BaselineConfig(hidden_1=32, hidden_2=16, batch_size=16, patience=5,
                            precision="fp32"))


@pytest.fixture
def listening():
    """Installs the build's handler as the kernel launcher does; takes it off afterwards."""
    logger = logging.getLogger(terminal.PROGRESS_LOGGER)
    saved = logger.level, logger.propagate
    handlers = []

    def listen():
        handler = terminal.listen_to_progress()
        handlers.append(handler)
        return handler

    yield listen
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


@pytest.fixture
def progress_file(tmp_path, monkeypatch, listening):
    path = tmp_path / "progress.log"
    monkeypatch.setenv(terminal.PROGRESS_ENV, str(path))
    assert listening() is not None
    return path


def test_lines_reach_the_file_only_when_a_build_listens(tmp_path, monkeypatch, listening):
    monkeypatch.delenv(terminal.PROGRESS_ENV, raising=False)
    assert listening() is None  # no build: the launcher installs nothing
    assert progress.item_done("nobody", 1, 2, "listens", 1.0) is False
    path = tmp_path / "progress.log"
    monkeypatch.setenv(terminal.PROGRESS_ENV, str(path))
    assert listening().path == path
    assert progress.logger.name == terminal.PROGRESS_LOGGER
    progress.logger.info("one")
    progress.logger.info("two\nlines")
    assert path.read_text().splitlines() == ["one", "two lines"]


def test_an_unwritable_file_warns_once_and_training_goes_on(tmp_path, monkeypatch, listening):
    monkeypatch.setenv(terminal.PROGRESS_ENV, str(tmp_path / "missing" / "progress.log"))
    listening()
    with pytest.warns(UserWarning, match="cannot write progress") as caught:
        assert progress.item_done("CLL table", 1, 3, "k=1", 1.0)
        assert progress.item_done("CLL table", 2, 3, "k=2", 1.0)
    assert len(caught) == 1


def test_nobody_listening_costs_no_formatting(monkeypatch):
    class Loud:
        def __format__(self, spec):
            raise AssertionError("formatted")

    assert not progress.logger.isEnabledFor(logging.INFO)
    assert progress.epoch_done("cvae k=1", 1, 3, Loud(), [1.0], 1) is False


def test_every_epoch_of_a_training_run_reaches_the_channel(tiny_data, progress_file, capsys):
    train = make_quadrant_data(tiny_data.train, 2)
    val = make_quadrant_data(tiny_data.val, 2)
    _, history = train_baseline(train, val, SMALL.baseline, max_epochs=3, device="cpu")
    lines = progress_file.read_text().splitlines()
    assert len(lines) == history.num_epochs == 3
    for epoch, line in enumerate(lines, start=1):
        assert line.startswith(f"baseline k=2: epoch {epoch}/3, validation loss "
                               f"{history.val_loss[epoch - 1]:.2f}")
        assert "elapsed" in line and "left" in line
    assert lines[-1].endswith("at most 0:00 left")
    assert capsys.readouterr().err == ""  # nothing on the kernel's own stderr (the page)


def test_without_a_listener_training_is_silent_and_the_command_line_listens(tiny_data,
                                                                            monkeypatch, capsys):
    assert not progress.logger.isEnabledFor(logging.INFO)
    monkeypatch.delenv(terminal.PROGRESS_ENV, raising=False)
    train = make_quadrant_data(tiny_data.train, 1)
    val = make_quadrant_data(tiny_data.val, 1)
    train_baseline(train, val, SMALL.baseline, max_epochs=2, device="cpu")
    assert capsys.readouterr().err == ""  # nobody listens: nothing printed
    handler = progress.show_on(sys.stderr)  # as `python -m cvae_utils train` does
    try:
        train_baseline(train, val, SMALL.baseline, max_epochs=2, device="cpu")
    finally:
        progress.stop_showing(handler)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err] == ["baseline k=1: epoch 1/2",
                                                    "baseline k=1: epoch 2/2"]


def test_item_lines_estimate_what_is_left(progress_file):
    assert progress.item_done("CLL table", 1, 3, "k=1 scored", 30.0)
    assert progress_file.read_text() == "CLL table 1/3: k=1 scored (0:30; about 1:00 left)\n"


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (3725, "1:02:05"),
                                           (float("nan"), "?")])
def test_durations_read_as_clock_times(seconds, text):
    assert progress.format_duration(seconds) == text


def test_relay_passes_on_whole_lines_in_order(tmp_path):
    path = tmp_path / "progress.log"
    seen = []
    relay = terminal.Relay(path, seen.append, interval=0.01).start()
    with open(path, "ab") as handle:
        handle.write(b"first\nsec")
        handle.flush()
        relay.poll()
        assert seen == ["first"]  # half a line waits for its end
        handle.write(b"ond\nthird\n")
    relay.stop()
    assert seen == ["first", "second", "third"]
    assert not any(t.name == "cvae-progress-relay" for t in threading.enumerate())


def test_the_kernel_drops_only_its_transport_warning():
    keep = DropTransportWarning()

    def record(message, level=logging.WARNING):
        return logging.LogRecord("IPKernelApp", level, __file__, 1, message, None, None)

    assert not keep.filter(record(TRANSPORT_WARNING + ". All communication ..."))
    assert keep.filter(record("Parent appears to have exited, shutting down."))
    assert keep.filter(record("Error in message handler", logging.ERROR))


def test_needs_follow_the_functions_a_chapter_calls():
    assert needs_of("table = cll_table(config=config, data=data)") == {"book", "cll_table"}
    assert needs_of("variants_table()") == {"variants", "variants_table"}
    assert needs_of("classifier, _ = trained_classifier(data=data)") == {"classifier"}
    assert needs_of("plotting.plot_digits(x)") == set()


def test_plan_finds_the_models_the_cache_holds(tiny_data, cache_path, tiny_budget):
    budget = tiny_budget
    before = build_plan(budget, budget, chapters=[], config=SMALL)
    baseline = next(m for m in before.models if m.label == "baseline k=2" and "book" in m.groups)
    assert not baseline.cached
    assert baseline.path == checkpoint_path(model_key("baseline", SMALL, budget, 2))
    trained_baseline(2, SMALL, budget, tiny_data, device="cpu", progress=False)
    after = build_plan(budget, budget, chapters=[], config=SMALL)
    cached = {m.label for m in after.models if m.cached}
    assert cached == {"baseline k=2"}  # shared by the book and the variants at this budget
    labels = [m.label for m in after.models]
    assert {"cvae k=1", "digit classifier", "variant gsnn k=3"} <= set(labels)
    assert len({m.path for m in after.models}) == len(labels)  # each file once
    assert "chapters to execute: none" in "\n".join(after.lines())


def test_plan_estimates_only_what_the_executing_chapters_train(cache_path):
    budget = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=2)
    plan = build_plan(budget, budget, chapters=["baseline"], needs={"book"},
                      seconds_per_chapter=5.0, config=SMALL)
    assert {m.label for m in plan.to_train} == {f"{kind} k={k}" for kind in ("baseline", "cvae")
                                                for k in (1, 2, 3)}
    assert all(m.epochs == 2 and m.seconds_per_epoch > 0 for m in plan.to_train)
    assert plan.scoring == []
    assert plan.seconds == pytest.approx(5.0 + sum(m.seconds for m in plan.to_train))
    text = "\n".join(plan.lines())
    assert "to train (smoke): 3 baseline k=1,2,3, 2 epochs" in text
    assert "estimated time on this machine" in text


def test_a_paper_plan_expects_early_stopping_and_prints_the_bound(cache_path):
    """With nothing cached, a paper run is expected to stop where the book's paper runs did (a
    smoke run always reaches its cap); the plan prints the time of runs that never stop early
    as the bound."""
    paper = Budget("paper", num_train=64, num_val=32, num_test=16, max_epochs=50)
    plan = build_plan(paper, paper, chapters=["baseline"], needs={"book"}, config=SMALL)
    assert {m.kind for m in plan.to_train} == {"baseline", "cvae"}
    for model in plan.to_train:
        assert model.epochs == round(TYPICAL_STOP[model.kind] * 50) < model.max_epochs == 50
        assert model.max_seconds == pytest.approx(50 * model.seconds_per_epoch)
    assert plan.seconds < plan.max_seconds
    text = "\n".join(plan.lines())
    cvae_epochs = round(TYPICAL_STOP["cvae"] * 50)
    assert f"about {cvae_epochs} epochs (typical of paper runs; at most 50) x" in text
    assert text.count("if no run stops early") == 1
    smoke = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=2)
    plan = build_plan(smoke, smoke, chapters=["baseline"], needs={"book"}, config=SMALL)
    assert plan.seconds == plan.max_seconds and "stops early" not in "\n".join(plan.lines())


def test_the_cll_table_and_the_variants_report_each_item(tiny_data, tmp_path, progress_file):
    from cvae_utils.tables import cll_table
    from cvae_utils.variants import variants_table

    budget = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=1)
    tiny = SMALL.replace(hidden_1=16, hidden_2=16, z_dim=3, batch_size=32)
    cll_table((1, 3), tiny, budget, tiny_data, num_samples=3, elbo_samples=2, device="cpu",
              cache=tmp_path, progress=False)
    lines = progress_file.read_text().splitlines()
    items = [line for line in lines if line.startswith("CLL table")]
    assert [line.split(":")[0] for line in items] == ["CLL table 1/2", "CLL table 2/2"]
    assert items[0].startswith("CLL table 1/2: k=1, N=16: NN ") and "CVAE IS" in items[0]
    assert sum("epoch 1/1" in line for line in lines) == 4  # two baselines, two CVAEs
    progress_file.write_text("")
    variants_table(("book", "gsnn"), (2,), budget, tiny_data, num_samples=3, progress=False,
                   cache=tmp_path, base=tiny, device="cpu")
    items = [line for line in progress_file.read_text().splitlines()
             if line.startswith("variants")]
    assert [line.split(":")[0] for line in items] == ["variants 1/2", "variants 2/2"]
    assert items[1].startswith("variants 2/2: k=2 gsnn: ")
