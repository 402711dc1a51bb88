"""The shared epoch loop in one process: it learns, and gradient accumulation equals one big batch."""

import copy

import numpy as np
import pytest
import torch

from gmptl.config import load_config
from gmptl.models.factory import build_model, configure_training
from gmptl.training.loop import run_epoch
from gmptl.training.stages import make_stage


def _batch(idx, n=8000):
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(8, n, generator=g) * 0.05
    emotion = torch.arange(8) % 4
    waves += (
        (emotion[:, None] + 1) * 0.05 * torch.sin(torch.arange(n)[None, :] * 0.05 * (emotion[:, None] + 1))
    )
    return {"wave": waves[idx], "n_samples": torch.full((len(idx),), n), "emotion": emotion[idx],
            "gender": (torch.arange(8) % 2)[idx]}  # fmt: skip


def _setup(extra=()):
    # the random-init tiny preset with its CNN trained: a loop test, independent of the demo's backbone
    sets = ["model.backbone=tiny", "stages.mtl.freeze_cnn=false", "stages.mtl.dropout=0.0", *extra]
    cfg = load_config("jobs/demo.yaml", sets)
    stage = make_stage("mtl", cfg.stages.mtl, 4)
    torch.manual_seed(0)
    model = build_model(cfg.model, stage.head_spec())
    configure_training(model, cfg.stages.mtl)
    return stage, model


def test_training_epochs_lower_the_loss_and_eval_changes_nothing():
    stage, model = _setup()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batches = [_batch(torch.arange(0, 4)), _batch(torch.arange(4, 8))]
    before = copy.deepcopy(model.state_dict())
    ev = run_epoch(model, batches, stage, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ev.n_examples == 8 and ev.confusion.sum() == 8 and ev.n_steps == 0
    losses = [run_epoch(model, batches, stage, torch.device("cpu"), optimizer=opt).loss_sum for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0]
    assert run_epoch(model, batches, stage, torch.device("cpu")).metrics("val_")["val_padding_waste"] == 0.0


def test_gradient_accumulation_equals_one_big_batch():
    results = []
    for accum, batches in (
        (1, [_batch(torch.arange(8))]),
        (2, [_batch(torch.arange(4)), _batch(torch.arange(4, 8))]),
    ):
        stage, model = _setup([f"stages.mtl.grad_accum_steps={accum}"])
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        stats = run_epoch(model, batches, stage, torch.device("cpu"), optimizer=opt)
        assert stats.n_steps == 1
        results.append(model.state_dict())
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-5), k


@pytest.mark.gpu
def test_bf16_training_step_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    stage, model = _setup()
    model = model.cuda()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batches = [_batch(torch.arange(0, 4)), _batch(torch.arange(4, 8))]
    losses = [run_epoch(model, batches, stage, torch.device("cuda"), optimizer=opt, bf16=True).loss_sum
              for _ in range(4)]  # fmt: skip
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_best_epoch_tracking_and_early_stopping():
    from gmptl.training.stages import should_stop, track_best

    state: dict = {}
    # max mode: a tie keeps the earlier epoch; patience counts epochs since the best
    assert [track_best(state, e, s, "max") for e, s in enumerate([0.3, 0.5, 0.5, 0.4], 1)] == [
        True, True, False, False]  # fmt: skip
    assert (state["best_epoch"], state["best_score"], state["since_best"], state["epoch"]) == (2, 0.5, 2, 4)
    assert should_stop(state, 2) and not should_stop(state, 3) and not should_stop(state, None)
    low: dict = {}
    assert [track_best(low, e, s, "min") for e, s in enumerate([2.0, 1.5, 1.7], 1)] == [True, True, False]
    assert low["best_epoch"] == 2 and not should_stop(low, 2)


def test_a_non_finite_loss_stops_before_the_weights_change():
    stage, model = _setup()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = _batch(torch.arange(0, 4))
    batch["wave"][0, 100] = float("nan")  # one corrupt sample
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FloatingPointError, match=r"training loss is nan .*stages.<stage>.lr"):
        run_epoch(model, [batch], stage, torch.device("cpu"), optimizer=opt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
