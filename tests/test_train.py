"""Trainer: schedules, deterministic batches, exact resume, resume/config errors, the CLI's error
paths, 2-process DDP (gloo on CPU), and a short training run that learns the shapes task."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from m2det.checkpoint import load_model, read_checkpoint
from m2det.config import get_config
from m2det.ema import WeightEMA
from m2det.errors import M2DetError
from m2det.rng_state import rng_state, set_rng_state
from m2det.sampler import EpochBatches
from m2det.schedule import OFFICIAL_FACTORS, parse_schedule
from m2det.shapes import generate
from m2det.train import build_parser, data_spec, main
from m2det.trainer import DataSpec, Trainer, TrainOptions

# m2det_tiny shrunk further so a training step takes milliseconds: 64 px, 3 scales, 2 TUMs.
CONFIG = get_config("m2det_tiny").replace(
    name="m2det_test", input_size=64, num_scales=3, steps=(8, 16, 32),
    sizes=(0.1, 0.3, 0.6, 0.9), planes=16, num_levels=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate(root, train=12, val=4, seed=3, size=64)
    return root


def _spec(root: Path, val: bool = False) -> DataSpec:
    return DataSpec(str(root / "annotations/train.json"), str(root / "train"),
                    str(root / "annotations/val.json") if val else None,
                    str(root / "val") if val else None)


def _options(**kw: object) -> TrainOptions:
    base = dict(epochs=2, batch=4, lr=0.01, warmup_epochs=0.5, schedule="cosine", workers=0,
                progress=False, log_every=1)
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


def test_official_schedule_warmup_and_steps() -> None:
    s = parse_schedule("official", 0.004, 160, 5)
    assert s(0.0) == pytest.approx(1e-6)
    assert s(2.5) == pytest.approx(1e-6 + (0.004 - 1e-6) / 2)
    assert s(5.0) == s(89.9) == pytest.approx(0.004)
    assert [s(e) for e in (90, 110, 130, 150, 159.9)] == pytest.approx(
        [0.002, 0.0004, 0.00004, 0.000004, 0.000004])
    assert OFFICIAL_FACTORS[-1] * 0.004 == pytest.approx(0.000004)
    short = parse_schedule("official", 0.004, 16, 0.5)  # steps scale with the run length
    assert short(8.9) == pytest.approx(0.004) and short(9.0) == pytest.approx(0.002)


def test_cosine_and_explicit_step_schedules() -> None:
    c = parse_schedule("cosine", 0.1, 10, 0)
    assert c(0) == pytest.approx(0.1) and c(10) == pytest.approx(0.001)
    assert c(5) == pytest.approx(0.001 + 0.099 / 2)
    st = parse_schedule("step:3,6", 0.1, 10, 0, gamma=0.5)
    assert [st(e) for e in (2.9, 3, 6.5)] == pytest.approx([0.1, 0.05, 0.025])
    for bad in ("linear", "step:a,b", "step:5,2"):
        with pytest.raises(M2DetError):
            parse_schedule(bad, 0.1, 10, 0)


def test_epoch_batches_are_seeded_disjoint_across_ranks_and_skippable() -> None:
    ranks = [EpochBatches(23, 3, seed=7, rank=r, world=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 3
    for r in ranks:
        r.set_epoch(1)
    first = [list(r) for r in ranks]
    seen = [i for batches in first for b in batches for _, i in b]
    assert len(seen) == len(set(seen)) == 18
    assert all(e == 1 for batches in first for b in batches for e, _ in b)
    ranks[0].set_epoch(1, skip=2)
    assert list(ranks[0]) == first[0][2:]
    ranks[0].set_epoch(2)
    assert list(ranks[0]) != first[0]
    with pytest.raises(M2DetError, match="fewer than one batch"):
        EpochBatches(5, 3, seed=0, world=2)


def test_rng_state_survives_weights_only_load(tmp_path: Path) -> None:
    state = rng_state()
    torch.save(state, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_resume_continues_exactly(shapes: Path, tmp_path: Path) -> None:
    opts = _options(augment="ssd")  # 3 steps per epoch, 6 in all; stop mid-epoch 2
    straight = Trainer(CONFIG, _spec(shapes), opts, tmp_path / "a", device="cpu")
    straight.fit()
    first = Trainer(CONFIG, _spec(shapes), opts, tmp_path / "b", device="cpu")
    first.fit(stop_at_step=4)
    ckpt = read_checkpoint(tmp_path / "b/last.pth")  # weights_only=True load
    assert ckpt["step"] == 4 and ckpt["config"]["name"] == CONFIG.name
    resumed = Trainer(CONFIG, _spec(shapes), opts, tmp_path / "b", device="cpu",
                      resume=tmp_path / "b/last.pth")
    assert resumed.step == 4
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.loc.0.weight"], first.model.state_dict()["head.loc.0.weight"])
    mom_a = straight.optimizer.state_dict()["state"]
    mom_b = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(mom_a[k]["momentum_buffer"], mom_b[k]["momentum_buffer"])
               for k in mom_a)
    final = load_model(tmp_path / "b/final.pth")  # trainer output loads as a model
    assert torch.equal(final.state_dict()["head.conf.0.bias"], b["head.conf.0.bias"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").open()
             if "eval" not in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_weight_ema_ramps_up_its_decay_and_copies_integer_buffers() -> None:
    model = torch.nn.BatchNorm1d(3)
    ema = WeightEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(2.0)  # the average starts at 1.0
    model.num_batches_tracked.fill_(7)
    ema.update()  # decay min(0.99, 1/10): 0.9 of the new value
    assert torch.allclose(ema.module.weight, torch.full((3,), 1.9))
    assert ema.module.num_batches_tracked.item() == 7 and ema.updates == 1
    ema.updates = 10_000  # ramped up: the decay itself
    ema.update()
    assert torch.allclose(ema.module.weight, torch.full((3,), 1.9 + 0.01 * 0.1))
    restored = WeightEMA(model, decay=0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 10_001 and torch.equal(restored.module.weight, ema.module.weight)


def test_ema_resumes_exactly_and_is_what_final_pth_holds(shapes: Path, tmp_path: Path) -> None:
    opts = _options(optimizer="adamw", lr=0.003, ema=0.9)
    straight = Trainer(CONFIG, _spec(shapes), opts, tmp_path / "a", device="cpu")
    straight.fit()
    Trainer(CONFIG, _spec(shapes), opts, tmp_path / "b", device="cpu").fit(stop_at_step=4)
    resumed = Trainer(CONFIG, _spec(shapes), opts, tmp_path / "b", device="cpu",
                      resume=tmp_path / "b/last.pth")
    resumed.fit()
    assert straight.ema is not None and resumed.ema is not None
    a, b = straight.ema.state_dict(), resumed.ema.state_dict()
    assert a["module"].keys() == b["module"].keys()
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    assert b["updates"] == 6
    final = read_checkpoint(tmp_path / "b/final.pth")["model"]
    deployed, trained = resumed.ema.module.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(final[k], deployed[k]) for k in final)
    assert not torch.equal(final["head.conf.0.weight"], trained["head.conf.0.weight"])
    no_ema = _options(optimizer="adamw", lr=0.003)
    Trainer(CONFIG, _spec(shapes), no_ema, tmp_path / "c", device="cpu").fit(stop_at_step=1)
    with pytest.raises(M2DetError, match="without --ema"):
        Trainer(CONFIG, _spec(shapes), opts, tmp_path / "c", device="cpu",
                resume=tmp_path / "c/last.pth")


def test_resume_rejects_other_config_and_other_data(shapes: Path, tmp_path: Path) -> None:
    opts = _options(epochs=1)
    Trainer(CONFIG, _spec(shapes), opts, tmp_path, device="cpu").fit(stop_at_step=1)
    other = CONFIG.replace(name="m2det_test_wide", planes=32)
    with pytest.raises(M2DetError, match="config 'm2det_test'.*differs"):
        Trainer(other, _spec(shapes), opts, tmp_path, device="cpu",
                resume=tmp_path / "last.pth")
    with pytest.raises(M2DetError, match="--optimizer sgd"):
        Trainer(CONFIG, _spec(shapes), _options(epochs=1, optimizer="adamw"), tmp_path,
                device="cpu", resume=tmp_path / "last.pth")
    with pytest.raises(M2DetError, match="other data"):
        Trainer(CONFIG, _spec(shapes), _options(epochs=1, batch=2), tmp_path, device="cpu",
                resume=tmp_path / "last.pth")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("m2det-train: error: ") and "\n" not in err
    return err


def test_cli_error_paths(shapes: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert "not found" in _cli(capsys, "--config", "m2det_tiny", "--data", str(tmp_path / "x.json"),
                               "--images", str(tmp_path), "--out", out)
    assert "unknown config" in _cli(capsys, "--config", "nope", "--data", str(shapes),
                                    "--out", out)
    assert "needs --images" in _cli(capsys, "--config", "m2det_tiny", "--data",
                                    str(shapes / "annotations/train.json"), "--out", out)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": i + 1, "name": n} for i, n in enumerate(CONFIG.labels)]}))
    assert "no usable images" in _cli(capsys, "--config", "m2det_tiny", "--data", str(empty),
                                      "--images", str(tmp_path), "--out", out)
    assert "checkpoint not found" in _cli(capsys, "--config", "m2det_tiny", "--data",
                                          str(shapes), "--out", out, "--resume", "nope.pth")
    assert "unknown device 'tpu'" in _cli(capsys, "--config", "m2det_tiny", "--data", str(shapes),
                                          "--out", out, "--device", "tpu")
    assert "has 5 classes" in _cli(capsys, "--config", "m2det320_vgg", "--data", str(shapes),
                                   "--out", out)
    assert "unknown schedule" in _cli(capsys, "--config", "m2det_tiny", "--data", str(shapes),
                                      "--out", out, "--schedule", "linear")
    assert "--ema must be in [0, 1)" in _cli(capsys, "--config", "m2det_tiny", "--data",
                                             str(shapes), "--out", out, "--ema", "1")
    assert "must be in (0, 1)" in _cli(capsys, "--config", "m2det_tiny", "--data", str(shapes),
                                       "--out", out, "--background-prior", "1")


def test_cli_trains_and_writes_metrics(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["--config", "m2det_tiny", "--data", str(shapes / "annotations/train.json"),
                 "--images", str(shapes / "train"), "--out", str(out), "--epochs", "1",
                 "--batch", "6", "--workers", "0", "--no-progress", "--schedule", "cosine",
                 "--warmup-epochs", "0.5"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [2]  # every 10 steps and the last one
    assert {"loss", "loss_l", "loss_c", "lr", "images_per_s"} <= set(records[0])
    ckpt = read_checkpoint(out / "last.pth")
    assert ckpt["command"][:3] == ["m2det-train", "--config", "m2det_tiny"]
    assert ckpt["step"] == 2 and (out / "final.pth").is_file()


def test_cpu_amp_trains_in_bfloat16_without_loss_scaling(shapes: Path, tmp_path: Path) -> None:
    trainer = Trainer(CONFIG, _spec(shapes), _options(amp=True, epochs=1), tmp_path, device="cpu")
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    seen: list[torch.dtype] = []
    trainer.model.head.conf[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = trainer.model.head.conf[0].weight.detach().clone()
    images, targets = next(iter(trainer.loader))
    terms = trainer.train_step(torch.as_tensor(images), [torch.as_tensor(t) for t in targets], 0.5)
    assert seen == [torch.bfloat16]
    assert all(np.isfinite(v) for v in terms.values())
    assert trainer.model.head.conf[0].weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(before, trainer.model.head.conf[0].weight)


def test_data_folder_layout_finds_the_val_split(shapes: Path) -> None:
    args = build_parser().parse_args(["--config", "m2det_tiny", "--data", str(shapes),
                                      "--out", "x"])
    spec = data_spec(args)
    assert spec.train_ann == str(shapes / "annotations/train.json")
    assert spec.val_images == str(shapes / "val")


def _ddp_worker(rank: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(CONFIG, _spec(Path(root)), _options(epochs=1, batch=4), out, device="cpu")
    trainer.fit()
    torch.save({k: v.detach().clone() for k, v in trainer.model.named_parameters()},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_weights(shapes: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(shapes), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = Trainer(CONFIG, _spec(shapes), _options(epochs=1), tmp_path / "x", device="cpu")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.equal(w0["head.loc.0.weight"], init.model.head.loc[0].weight)
    assert (tmp_path / "last.pth").is_file()  # rank 0 wrote it
    assert sum(1 for _ in (tmp_path / "metrics.jsonl").open()) == 3  # 3 steps, one writer


@pytest.mark.slow
def test_short_training_run_learns_the_shapes(tmp_path: Path) -> None:
    """m2det_tiny from scratch on 8 shape images, evaluated on the same images: the loss must
    collapse and COCO AP50 clear a bar far above chance (~0) -- a memorization check that the
    matching, the loss, the optimizer step and the evaluation path fit together."""
    generate(tmp_path / "s", train=8, val=1, seed=5, size=160)
    ann, images = str(tmp_path / "s/annotations/train.json"), str(tmp_path / "s/train")
    options = TrainOptions(epochs=60, batch=8, lr=0.002, optimizer="adamw", schedule="cosine",
                           warmup_epochs=1, augment="resize", bn_momentum=0.1, workers=0,
                           background_prior=0.99, progress=False, log_every=1)
    trainer = Trainer(get_config("m2det_tiny"), DataSpec(ann, images, ann, images), options,
                      tmp_path / "run", device="cpu")
    metrics = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    loc = [r["loss_l"] for r in records if "loss_l" in r]
    total = [r["loss"] for r in records if "loss" in r]
    assert np.mean(loc[-5:]) < 0.2 * np.mean(loc[:3])
    assert np.mean(total[-5:]) < 0.5 * np.mean(total[:3])
    assert metrics["num_images"] == 8 and metrics["AP50"] > 0.3
