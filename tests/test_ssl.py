"""Self-supervised pretraining (SPEC §10, issue #12): losses against hand-computed cases, and
the gathered global batch on 2 gloo ranks against one process."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conf.typed import ConfigError
from trainer.models import PretrainedError, create_model, list_models
from trainer.models.ssl import FEATURES
from trainer.selfsup.gather import gather_with_grad
from trainer.selfsup.losses import ALIGNLoss, ConVIRTLoss, VICRegLoss, info_nce, swap_rows
from trainer.tasks import task_spec

R = 1 / math.sqrt(2)


def test_info_nce_both_directions_by_hand():
    """a = e1, e2; b = e1, (e1 + e2)/sqrt2: cosine matrix [[1, r], [0, r]] with r = 1/sqrt2.
    a -> b reads its rows, b -> a its columns; the two directions differ."""
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms do not matter: cosine similarity
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a_to_b, b_to_a = info_nce(a, b, temperature=1.0)
    row0 = -1 + math.log(math.e + math.exp(R))
    row1 = -R + math.log(1 + math.exp(R))
    col0 = -1 + math.log(math.e + 1)
    col1 = -R + math.log(2 * math.exp(R))
    assert a_to_b.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert b_to_a.item() == pytest.approx((col0 + col1) / 2, rel=1e-6)
    half = info_nce(a, b, temperature=0.5)[0]  # temperature divides the similarities
    assert half.item() == pytest.approx(
        (-2 + math.log(math.e**2 + math.exp(2 * R)) - 2 * R + math.log(1 + math.exp(2 * R))) / 2, rel=1e-6
    )
    terms = ConVIRTLoss(temperature=1.0)(a, b)
    assert terms["loss"].item() == pytest.approx((a_to_b.item() + b_to_a.item()) / 2, rel=1e-6)


def test_vicreg_three_terms_by_hand():
    """x = [[1, 0], [-1, 0]], y = [[1, 1], [-1, -1]] (N = D = 2, unbiased variances):
    invariance mean((x - y)^2) = 0.5; variance: x's second dim has std sqrt(1e-4) = 0.01, so
    (0 + 0.99) / 2 for x, 0 for y, averaged -> 0.2475; covariance: x's is diagonal, y's has
    off-diagonal 2, 2 -> (4 + 4) / D = 4."""
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    terms = VICRegLoss()(x, y)
    assert terms["invariance"].item() == pytest.approx(0.5)
    assert terms["variance"].item() == pytest.approx(0.2475, rel=1e-5)
    assert terms["covariance"].item() == pytest.approx(4.0)
    assert terms["loss"].item() == pytest.approx(25 * 0.5 + 25 * 0.2475 + 4.0, rel=1e-5)
    assert VICRegLoss(1, 0, 0)(x, y)["loss"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        VICRegLoss()(x[:1], y[:1])


def test_align_learns_the_temperature_with_the_hand_computed_gradient():
    """Identical orthonormal pairs: each direction's loss is log(1 + e^(-1/tau)) and its
    derivative in tau is (1 - sigmoid(1/tau)) / tau^2; ALIGN learns log tau, so the gradient it
    sees is tau times that."""
    tau = 0.5
    loss_fn = ALIGNLoss(temperature=tau)
    assert loss_fn.tau.item() == pytest.approx(tau)
    eye = torch.eye(2)
    terms = loss_fn(eye, eye)
    assert terms["loss"].item() == pytest.approx(math.log1p(math.exp(-1 / tau)), rel=1e-6)
    terms["loss"].backward()
    sig = 1 / (1 + math.exp(-1 / tau))
    assert loss_fn.log_tau.grad.item() == pytest.approx(tau * (1 - sig) / tau**2, rel=1e-5)
    assert list(ConVIRTLoss().parameters()) == []  # ConVIRT's temperature is fixed
    with pytest.raises(ValueError, match="temperature"):
        ConVIRTLoss(temperature=0.0)


def test_noisy_pairs_move_exactly_the_asked_fraction_of_rows():
    z = torch.arange(20.0).view(20, 1)
    gen = torch.Generator().manual_seed(0)
    swapped = swap_rows(z, 0.2, gen)
    moved = (swapped != z).squeeze(1)
    assert int(moved.sum()) == 4  # round(0.2 * 20) rows, none left in place
    assert sorted(swapped.squeeze(1).tolist()) == z.squeeze(1).tolist()  # a permutation
    assert torch.equal(swap_rows(z, 0.0), z) and torch.equal(swap_rows(z, 0.05), z)  # < 2 rows: none


# ---------------------------------------------------------------- DDP: the global batch

WORLD = 2
ROWS = 6  # per rank; the single-process reference sees all 12


class _Pair(nn.Module):
    """Two tiny linear 'encoders' and the objective: the DDP module under test."""

    def __init__(self, method: str):
        super().__init__()
        torch.manual_seed(0)
        self.ehr, self.cxr = nn.Linear(5, 4), nn.Linear(7, 4)
        self.objective = OBJECTIVES[method]()

    def forward(self, ehr: torch.Tensor, cxr: torch.Tensor) -> torch.Tensor:
        z_ehr, z_cxr = gather_with_grad(self.ehr(ehr)), gather_with_grad(self.cxr(cxr))
        return self.objective(z_ehr, z_cxr)["loss"]


OBJECTIVES = {"convirt": ConVIRTLoss, "align": ALIGNLoss, "vicreg": VICRegLoss}


def _whole_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * ROWS, 5, generator=gen), torch.randn(WORLD * ROWS, 7, generator=gen)


def _gather_worker(rank: int, init_file: str, results: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ehr, cxr = _whole_batch()
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        for method in OBJECTIVES:
            ddp = nn.parallel.DistributedDataParallel(_Pair(method))
            loss = ddp(ehr[mine], cxr[mine])
            loss.backward()
            grads = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}
            results[(method, rank)] = (loss.item(), grads)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_loss_and_gradients_of_one_process_over_the_whole_batch(tmp_path):
    """Each rank holds half the batch; with the gathering loss under DDP, the loss and every
    gradient (both encoders, ALIGN's temperature) equal one process given all rows. Without the
    gradient through the gather the other rank's half would be constants and this would fail."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_worker, args=(str(tmp_path / "pg"), results), nprocs=WORLD, join=True)
        results = dict(results)
    ehr, cxr = _whole_batch()
    for method in OBJECTIVES:
        ref = _Pair(method)
        loss = ref(ehr, cxr)
        loss.backward()
        for rank in range(WORLD):
            got_loss, grads = results[(method, rank)]
            assert got_loss == pytest.approx(loss.item(), rel=1e-5), method
            for name, param in ref.named_parameters():
                assert torch.allclose(grads[name], param.grad, rtol=1e-4, atol=1e-6), f"{method}: {name}"


def test_local_only_negatives_would_differ_from_the_whole_batch():
    """The control for the test above: the mean of per-half losses is not the whole-batch
    loss, so equality there is evidence of the gather, not a property of the data."""
    ehr, cxr = _whole_batch()
    for method in OBJECTIVES:
        ref = _Pair(method)
        halves = [ref(ehr[i * ROWS : (i + 1) * ROWS], cxr[i * ROWS : (i + 1) * ROWS]) for i in range(WORLD)]
        assert sum(h.item() for h in halves) / WORLD != pytest.approx(ref(ehr, cxr).item(), rel=1e-3), method


# ---------------------------------------------------------------- models (registry-driven)

PRETRAIN = list_models("pretrain")
IMAGE = 32


def paired_batch(rows: int = 4, seed: int = 0, has_image: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5][:rows])
    return {
        "ehr": torch.randn(rows, 5, 76, generator=gen),
        "ehr_len": lengths,
        "image": torch.randn(rows, 3, IMAGE, IMAGE, generator=gen),
        "has_image": torch.full((rows,), has_image),
        "y": (torch.rand(rows, 1, generator=gen) > 0.5).float(),
    }


def test_pretrain_models_are_registered_with_the_spec_architecture():
    assert PRETRAIN == ["align", "convirt", "vicreg"]
    for name in PRETRAIN:
        model = create_model(name, None, task_spec("pheno"))
        assert (
            model.kind == "pretrain"
            and model.ehr_encoder.out_dim == 128
            and len(model.ehr_encoder.layers) == 1
        )
        for head, width in ((model.ehr_head, 128), (model.cxr_head, 512)):
            assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
            assert head[0].in_features == width and head[-1].out_features == 128 and head[-1].bias is None
    align = create_model("align", None, task_spec("pheno"))
    assert align.objective.tau.item() == pytest.approx(0.07) and align.config.noisy_fraction == 0.15
    assert create_model("convirt", None, task_spec("pheno")).objective.tau == 0.1
    with pytest.raises(ConfigError, match="noisy_fraction"):
        create_model("align", {"noisy_fraction": 1.5}, task_spec("pheno"))


@pytest.mark.parametrize("name", PRETRAIN)
def test_pretrain_forward_gives_a_loss_and_every_weight_a_gradient(name):
    """DDP runs without find_unused_parameters: every weight (ALIGN's temperature too) must get
    a finite gradient from the loss; a batch with an unpaired sample is refused."""
    torch.manual_seed(0)
    model = create_model(name, None, task_spec("pheno")).train()
    terms = model(paired_batch())
    assert terms["loss"].dim() == 0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}: {pname}"
    with pytest.raises(ValueError, match="paired samples"):
        model(paired_batch(has_image=False))


def test_probe_and_finetune_load_the_pretrained_encoders_without_heads(tmp_path):
    torch.manual_seed(0)
    pretrained = create_model("vicreg", None, task_spec("pheno"))
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": pretrained.state_dict(), "model_name": "vicreg", "model_config": {}}, path)
    ihm = task_spec("ihm")
    probe = create_model("ssl_probe", {"encoder_ckpt": str(tmp_path / "run")}, ihm)  # the run folder
    assert sum(p.numel() for p in probe.parameters() if p.requires_grad) == 641  # paper Table 8
    for name in ("ehr_encoder", "cxr_encoder"):
        ours, theirs = getattr(probe, name).state_dict(), getattr(pretrained, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert not hasattr(probe, "ehr_head")
    tune = create_model("ssl_finetune", {"encoder_ckpt": str(path)}, ihm)
    assert all(p.requires_grad for p in tune.parameters())
    ehr_only = create_model("ssl_probe", {"encoder_ckpt": str(path), "features": "ehr"}, ihm)
    assert sum(p.numel() for p in ehr_only.parameters() if p.requires_grad) == 129
    with pytest.raises(ConfigError, match="needs encoder="):
        create_model("ssl_probe", None, ihm)
    with pytest.raises(PretrainedError, match="no pretraining checkpoint"):
        create_model("ssl_probe", {"encoder_ckpt": str(tmp_path / "nope")}, ihm)


def test_the_head_on_cached_features_equals_the_whole_model():
    probe = create_model("ssl_probe", {"init": "random"}, task_spec("ihm")).eval()
    batch = paired_batch()
    batch["has_image"] = torch.tensor([True, False, True, True])
    with torch.no_grad():
        feats = probe.features(batch)
        assert feats.shape == (4, 640) and not feats[1, 128:].any()  # missing image: zeros
        assert torch.allclose(probe({FEATURES: feats}), probe(batch))
