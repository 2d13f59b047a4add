"""Registry-driven model tests on tiny CPU inputs (shards/FORMAT.md batches)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conf.typed import ConfigError
from trainer.models import PretrainedError, create_model, list_models, model_class, model_config
from trainer.models.base import last_valid
from trainer.tasks import task_spec

IMAGE = 64
STEPS = 6
PRETRAINED = ("early", "medfuse", "late", "ssl_probe", "ssl_finetune")  # need checkpoints unless init=random
TINY_VIT = {
    "cxr_encoder": "vit",
    "vit_image_size": IMAGE,
    "vit_patch": 16,
    "vit_layers": 1,
    "vit_heads": 2,
    "vit_dim": 32,
    "vit_mlp_dim": 64,
}
TRANSFORMER_EHR = {"ehr_encoder": "transformer", "ehr_hidden": 32, "ehr_heads": 2, "ehr_ff_dim": 64}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: extra intra-op threads only spin on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(task, lengths=(STEPS, 3, 1), has_image=(True, False, True), seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    ehr = torch.randn(rows, max(lengths), 76, generator=gen)
    for i, n in enumerate(lengths):
        ehr[i, n:] = 0.0  # end padding, as the collate does
    has = torch.tensor(has_image)
    image = torch.randn(rows, 3, IMAGE, IMAGE, generator=gen) * has.view(-1, 1, 1, 1)
    if task.is_multiclass:
        y = torch.randint(0, task.num_outputs, (rows,), generator=gen)
    else:
        y = (torch.rand(rows, task.num_outputs, generator=gen) > 0.5).float()
    return {"ehr": ehr, "ehr_len": torch.tensor(lengths), "image": image, "has_image": has, "y": y}


def build(name, task, **overrides):
    cfg = {"init": "random"} if name in PRETRAINED else {}
    cfg.update(overrides)
    torch.manual_seed(0)
    return create_model(name, cfg, task)


def eval_setup(name, task_name, **overrides):
    """An eval-mode model of ``task_name`` and the standard mixed batch."""
    task = task_spec(task_name)
    return build(name, task, **overrides).eval(), make_batch(task)


def loss_of(logits, batch, task):
    if task.is_multiclass:
        return nn.functional.cross_entropy(logits, batch["y"])
    return nn.functional.binary_cross_entropy_with_logits(logits, batch["y"])


SUPERVISED = list_models("supervised")  # logits out; the pretrain kind is tested in test_ssl.py


def test_registry_has_the_models_of_both_kinds_and_rejects_unknown_names_and_keys():
    assert SUPERVISED == [
        "daft",
        "early",
        "joint",
        "late",
        "medfuse",
        "mmtm",
        "ssl_finetune",
        "ssl_probe",
        "uni_cxr",
        "uni_ehr",
    ]
    assert list_models("pretrain") == ["align", "convirt", "vicreg"]
    assert list_models() == sorted(SUPERVISED + ["align", "convirt", "vicreg"])
    with pytest.raises(ConfigError, match="unknown model 'medfuze'"):
        create_model("medfuze", None, task_spec("ihm"))
    with pytest.raises(ConfigError, match="fusion_dimm"):
        create_model("joint", {"fusion_dimm": 3}, task_spec("ihm"))


@pytest.mark.parametrize("task_name", ["ihm", "pheno", "los"])  # binary, multi-label, multiclass
@pytest.mark.parametrize("name", SUPERVISED)
def test_forward_backward_gradients(name, task_name):
    """Logits [B, C]; every trainable parameter a finite gradient, every frozen one none."""
    task = task_spec(task_name)
    model = build(name, task).train()
    batch = make_batch(task)
    logits = model(batch)
    assert logits.shape == (3, task.num_outputs)
    assert torch.isfinite(logits).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not model_class(name).trainable:
        assert not trainable and not logits.requires_grad
        return
    loss_of(logits, batch, task).backward()
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"
        else:
            assert param.grad is None, f"{name}: frozen {pname} got a gradient"


@pytest.mark.parametrize("has_image", [(False, False, False), (True, True, True)])
@pytest.mark.parametrize("name", SUPERVISED)
def test_every_weight_stays_in_the_graph_without_missing_or_present_images(name, has_image):
    """DDP needs the same parameters used every step: all-missing and all-present batches still
    give every trainable parameter a (finite) gradient; an unused encoder's is zero."""
    task = task_spec("pheno")
    model = build(name, task).train()
    batch = make_batch(task, has_image=has_image)
    logits = model(batch)
    assert torch.isfinite(logits).all()
    if not model.trainable:
        return
    loss_of(logits, batch, task).backward()
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}: {pname}"
    encoder = getattr(model, "cxr_encoder", None)
    if encoder is not None and not any(has_image) and encoder.backbone.conv1.weight.requires_grad:
        assert all(not p.grad.any() for p in encoder.parameters())


CAUSAL_VARIANTS = [
    ("uni_ehr", {}),
    ("uni_ehr", TRANSFORMER_EHR),
    ("uni_cxr", {}),
    ("early", {}),
    ("joint", TRANSFORMER_EHR),
    ("late", {}),
    ("medfuse", {}),
    ("mmtm", {"ehr_pool": "running"}),
    ("daft", {"ehr_pool": "running"}),
    ("ssl_probe", {}),
    ("ssl_finetune", {"features": "cxr"}),
    ("ssl_probe", {"features": "ehr"}),
]


@pytest.mark.parametrize("task_name", ["decomp", "los"])
@pytest.mark.parametrize(("name", "overrides"), CAUSAL_VARIANTS)
def test_sequence_mode_equals_sample_mode_on_truncated_inputs(name, overrides, task_name):
    """forward_sequence(...)[b, t] == forward(window cut at hour t) for every valid hour."""
    task = task_spec(task_name)
    model = build(name, task, **overrides).eval()
    assert model.causal
    batch = make_batch(task, lengths=(STEPS, 4), has_image=(True, False))
    with torch.no_grad():
        seq = model.forward_sequence(batch)
        assert seq.shape == (2, STEPS, task.num_outputs)
        for t in range(STEPS):
            cut = dict(batch, ehr=batch["ehr"][:, : t + 1], ehr_len=batch["ehr_len"].clamp(max=t + 1))
            sample = model(cut)
            for b in range(2):
                if t < int(batch["ehr_len"][b]):
                    torch.testing.assert_close(seq[b, t], sample[b], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mmtm", "daft"])
def test_window_pooling_models_are_sample_mode_only(name):
    task = task_spec("decomp")
    model = build(name, task)
    assert not model.causal
    with pytest.raises(NotImplementedError, match="mode=sample"):
        model.forward_sequence(make_batch(task))


@pytest.mark.parametrize("name", ["mmtm", "daft"])
def test_window_pooling_sees_the_whole_window(name):
    """The window-mean models really pool: a change in hour 0 moves the score (not just h_T)."""
    model, batch = eval_setup(name, "ihm")
    changed = dict(batch, ehr=batch["ehr"].clone())
    changed["ehr"][:, 0] += 5.0
    with torch.no_grad():
        assert not torch.allclose(model(batch), model(changed))


def test_mmtm_exposes_unimodal_heads_and_falls_back_to_ehr_without_image():
    model, batch = eval_setup("mmtm", "pheno")
    with torch.no_grad():
        heads = model.forward_heads(batch)
    assert set(heads) == set(model.head_names) == {"fused", "ehr", "cxr"}
    present = batch["has_image"]
    torch.testing.assert_close(heads["fused"][present], (heads["ehr"][present] + heads["cxr"][present]) / 2)
    torch.testing.assert_close(heads["fused"][~present], heads["ehr"][~present])


def test_medfuse_missing_image_is_a_length_one_sequence():
    model, batch = eval_setup("medfuse", "ihm")
    with torch.no_grad():
        v_ehr = model.encode_ehr(batch)
        expected = model.classifier(model.fusion_lstm(v_ehr[1:2, None])[0][:, -1])
        torch.testing.assert_close(model(batch)[1:2], expected)


def test_mmtm_and_daft_settings_reach_the_blocks():
    task = task_spec("pheno")
    mmtm = build("mmtm", task, mmtm_stage="layer3", mmtm_ratio=8.0)
    assert (mmtm.squeeze.in_features, mmtm.squeeze.out_features) == (512, 128)
    assert mmtm.gate_cxr.out_features == 256
    assert torch.isfinite(mmtm(make_batch(task))).all()
    daft = build("daft", task)
    assert daft.film[0].out_features == int((16 + 512) / 7)
    with pytest.raises(ConfigError, match="ehr_encoder=lstm"):
        build("daft", task, **TRANSFORMER_EHR)
    with pytest.raises(ConfigError, match="layer4"):
        build("mmtm", task, ehr_pool="running", mmtm_stage="layer2")


@pytest.mark.parametrize("name", ["uni_cxr", "joint"])
def test_vit_option(name):
    task = task_spec("radiology")
    model = build(name, task, **TINY_VIT)
    batch = make_batch(task)
    loss_of(model(batch), batch, task).backward()
    assert model.cxr_encoder.backbone.encoder.layers[0].mlp[0].weight.grad is not None
    with pytest.raises(ValueError, match="vit_image_size"):
        model(dict(batch, image=batch["image"][..., :32, :32]))


@pytest.mark.parametrize("name", SUPERVISED)
def test_resnet18_option_builds_every_model_with_a_cxr_encoder(name):
    """The quick preset's smaller CXR encoder: the same 512-d output and stage widths, so every
    model (MMTM and DAFT reach into its stages) trains with it unchanged."""
    task = task_spec("pheno")
    paper = build(name, task)
    if not hasattr(paper, "cxr_encoder"):
        pytest.skip(f"{name} has no CXR encoder")
    model = build(name, task, cxr_encoder="resnet18")
    blocks = [len(m.cxr_encoder.backbone.layer3) for m in (paper, model)]
    assert blocks == [6, 2]  # ResNet-34's third stage has 6 blocks, ResNet-18's 2
    batch = make_batch(task)
    out = model(batch)
    logits = out if isinstance(out, torch.Tensor) else out["fused"]
    loss_of(logits, batch, task).backward()
    trained = [p.grad for p in model.cxr_encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in trained)


def test_frozen_encoders_stay_in_eval_mode():
    model = build("early", task_spec("ihm")).train()
    assert not model.cxr_encoder.training and not model.ehr_encoder.training
    assert model.cxr_proj.training


def test_bad_batches_fail_with_the_contract_words():
    task = task_spec("ihm")
    model = build("uni_ehr", task)
    batch = make_batch(task)
    with pytest.raises(ValueError, match=r"\[B, T, 76\]"):
        model(dict(batch, ehr=batch["ehr"][..., :10]))
    with pytest.raises(ValueError, match="ehr_len"):
        model(dict(batch, ehr_len=torch.tensor([0, 1, 1])))
    with pytest.raises(KeyError, match="has_image"):
        model({k: v for k, v in batch.items() if k != "has_image"})


def test_last_valid_reads_the_last_real_hour():
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    assert last_valid(states, torch.tensor([4, 2])).flatten().tolist() == [3.0, 5.0]


# pretrained checkpoints ---------------------------------------------------------------------


def save_unimodal(root, task, name, seed=0, **overrides):
    from conf.typed import to_dict

    model = build(name, task, **overrides)
    path = root / task.name / name / str(seed) / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_name": name, "model_config": to_dict(model.config)}, path)
    return model, path


def from_runs(name, task, runs_dir, seed):
    """``name`` built as the trainer builds it: unimodal checkpoints found in ``runs_dir``."""
    from trainer.runtime import find_pretrained

    cfg = model_config(name)
    return create_model(name, cfg, task, checkpoints=find_pretrained(name, cfg, task.name, runs_dir, seed))


@pytest.fixture(scope="module")
def unimodal_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    task = task_spec("ihm")
    ehr, ehr_path = save_unimodal(root, task, "uni_ehr")
    cxr, cxr_path = save_unimodal(root, task, "uni_cxr")
    return root, ehr, cxr, ehr_path, cxr_path


def test_fusion_models_start_from_the_unimodal_runs_by_convention(unimodal_runs):
    root, ehr, cxr, _, _ = unimodal_runs
    task = task_spec("ihm")
    for name in ("early", "medfuse"):
        model = from_runs(name, task, root, seed=0)
        for mine, theirs in ((model.ehr_encoder, ehr.ehr_encoder), (model.cxr_encoder, cxr.cxr_encoder)):
            for (key, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
                assert torch.equal(a, b), f"{name}: {key} not loaded"
    early = from_runs("early", task, root, seed=0)
    assert all(not p.requires_grad for p in early.ehr_encoder.parameters())


def test_late_fusion_averages_the_loaded_models_probabilities(unimodal_runs):
    root, ehr, cxr, ehr_path, cxr_path = unimodal_runs
    task = task_spec("ihm")
    late = create_model("late", {"ehr_ckpt": str(ehr_path), "cxr_ckpt": str(cxr_path)}, task)
    assert late.trainable is False
    batch = make_batch(task)
    with torch.no_grad():
        p_ehr, p_cxr = ehr.eval()(batch).sigmoid(), cxr.eval()(batch).sigmoid()
        got = late.train()(batch).sigmoid()  # train() must not switch the frozen parts to train mode
    expected = torch.where(batch["has_image"][:, None], (p_ehr + p_cxr) / 2, p_ehr)
    torch.testing.assert_close(got, expected)


def test_checkpoint_errors_are_clear(unimodal_runs, tmp_path):
    root, _, _, ehr_path, cxr_path = unimodal_runs
    task = task_spec("ihm")
    with pytest.raises(PretrainedError, match="checkpoint not found: .*nowhere"):
        create_model("early", {"ehr_ckpt": str(tmp_path / "nowhere.pt"), "cxr_ckpt": str(cxr_path)}, task)
    with pytest.raises(PretrainedError, match="holds model 'uni_cxr', expected 'uni_ehr'"):
        create_model("medfuse", {"ehr_ckpt": str(cxr_path), "cxr_ckpt": str(cxr_path)}, task)
    with pytest.raises(PretrainedError, match=r"seeds found \[\]"):
        from_runs("early", task_spec("pheno"), root, seed=None)
    _, tf_path = save_unimodal(tmp_path, task, "uni_ehr", **TRANSFORMER_EHR)
    with pytest.raises(PretrainedError, match="model.ehr_encoder=transformer"):
        create_model("early", {"ehr_ckpt": str(tf_path), "cxr_ckpt": str(cxr_path)}, task)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(PretrainedError, match="not a model checkpoint"):
        create_model("early", {"ehr_ckpt": str(tmp_path / "other.pt"), "cxr_ckpt": str(cxr_path)}, task)
    with pytest.raises(PretrainedError, match="no uni_ehr checkpoint for ehr_encoder: set model.ehr_ckpt"):
        create_model("early", {"cxr_ckpt": str(cxr_path)}, task)


def test_the_trainer_finds_the_inputs_a_model_declares(tmp_path):
    """Explicit files win; runs_dir, pretrained_seed and cxr_pretrain_task steer the lookup."""
    from trainer.runtime import find_pretrained

    cfg = model_config("medfuse", ["cxr_pretrain_task=radiology", "pretrained_seed=3", "ehr_ckpt=e.pt"])
    assert find_pretrained("medfuse", cfg, "ihm", tmp_path, seed=0) == {
        "cxr_encoder": tmp_path / "radiology" / "uni_cxr" / "3" / "checkpoints" / "best.pt"
    }
    late = model_config("late", [f"runs_dir={tmp_path / 'other'}"])
    assert find_pretrained("late", late, "ihm", tmp_path, seed=1) == {
        "ehr_model": tmp_path / "other" / "ihm" / "uni_ehr" / "1" / "checkpoints" / "best.pt",
        "cxr_model": tmp_path / "other" / "ihm" / "uni_cxr" / "1" / "checkpoints" / "best.pt",
    }
    assert find_pretrained("joint", model_config("joint"), "ihm", tmp_path, seed=0) == {}  # init=random
    assert find_pretrained("uni_ehr", model_config("uni_ehr"), "ihm", tmp_path, seed=0) == {}
