"""Standard datasets read from files in their real formats, written here under tmp_path (no network)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import (no_network, write_cifar, write_mnist_like, write_stl10, write_svhn,  # noqa: F401 (fixture)
                        write_tiny_imagenet)

from teli.cli import main
from teli.data import load_dataset
from teli.data import torchvision_sources as tvs
from teli.errors import TeliError


@pytest.mark.parametrize("name,folder,hflip", [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True),
                                               ("kmnist", "KMNIST", False)])
def test_idx_datasets_from_gz_files(tmp_path, name, folder, hflip):
    data = write_mnist_like(tmp_path / folder / "raw")
    ds = load_dataset(name, str(tmp_path))
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (40, 1, 28, 28)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(data["x_train"]))
    assert torch.equal(ds.y_test, torch.from_numpy(data["y_test"]).long())
    assert ds.mean == tvs.STATS[name][0] and ds.hflip is hflip and ds.num_classes == 10
    assert (tmp_path / folder / "raw" / "train-images-idx3-ubyte").is_file()  # gunzipped where torchvision wants it


def test_fashion_mnist_from_the_debian_folder(tmp_path, monkeypatch, capsys):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    data = write_mnist_like(system)
    monkeypatch.setitem(tvs.SYSTEM_SOURCES, "fashion-mnist", (system, "apt-get install dataset-fashion-mnist"))
    ds = load_dataset("fashion-mnist", str(tmp_path / "root"))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(data["x_test"]))
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
    assert str(system) in capsys.readouterr().err


def test_missing_dataset_is_one_line_naming_folder_and_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tvs.SYSTEM_SOURCES, "fashion-mnist", (tmp_path / "absent", "apt-get install dataset-fashion-mnist"))
    with pytest.raises(TeliError) as err:
        load_dataset("fashion-mnist", str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "fashion-mnist" in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert "--download" in message and "apt-get install dataset-fashion-mnist" in message
    assert main(["run", "--dataset", "cifar10", "--data-root", str(tmp_path), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cifar-10-batches-py" in lines[0] and "--download" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def offline(root, **kwargs):
        calls.append(kwargs)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(TeliError, match=r"downloading 'cifar10' into .* failed .*Name or service not known"):
        load_dataset("cifar10", str(tmp_path), download=True)
    assert calls == [{"download": True}]


def test_truncated_idx_file_is_reported(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw)
    load_dataset("mnist", str(tmp_path))
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TeliError, match="cannot read .*train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    data = write_cifar(tmp_path, hundred)
    ds = load_dataset("cifar100" if hundred else "cifar10", str(tmp_path))
    assert ds.num_classes == (100 if hundred else 10) and ds.input_shape == (3, 32, 32)
    assert torch.equal(ds.x_train, torch.from_numpy(data["x_train"])) and torch.equal(ds.y_train, torch.from_numpy(data["y_train"]))
    assert torch.equal(ds.x_test, torch.from_numpy(data["x_test"])) and ds.hflip


def test_svhn_mat_files(tmp_path):
    pytest.importorskip("scipy.io", reason="writing SVHN's .mat files needs scipy")
    data = write_svhn(tmp_path)
    ds = load_dataset("svhn", str(tmp_path))
    assert torch.equal(ds.x_train, torch.from_numpy(data["x_train"]))
    assert torch.equal(ds.y_test, torch.from_numpy(data["y_test"]))  # label 10 read as digit 0
    assert 0 in ds.y_train.tolist() and ds.y_train.max() == 9 and not ds.hflip


def test_stl10_binaries_with_unlabelled_pool(tmp_path):
    data = write_stl10(tmp_path)
    ds = load_dataset("stl10", str(tmp_path))
    assert torch.equal(ds.x_train, torch.from_numpy(data["x_train"]))  # column-major images turned the right way
    assert torch.equal(ds.y_train, torch.from_numpy(data["y_train"]))
    assert torch.equal(ds.x_extra_unlabelled, torch.from_numpy(data["x_unlabeled"]))


def test_tiny_imagenet_layout_and_cache(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path)
    ds = load_dataset("tiny-imagenet", str(tmp_path))
    val = tmp_path / "tiny-imagenet-200" / "val"
    assert (val / "n02" / "images" / "val_1_0.JPEG").is_file() and not (val / "images").exists()
    assert ds.x_train.shape == (9, 3, 64, 64) and ds.x_test.shape == (6, 3, 64, 64) and ds.num_classes == 200
    assert ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert abs(ds.x_test[2, 0].float().mean().item() - 80) < 4  # class 1's colour, through JPEG
    assert (tmp_path / ".teli-cache" / "tiny-imagenet" / "meta.json").is_file()

    def no_decoding(files):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(tvs, "_decode_folder", no_decoding)
    again = load_dataset("tiny-imagenet", str(tmp_path))
    assert torch.equal(again.x_train, ds.x_train)


def test_channels_and_resize_adapt_a_dataset(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw")
    plain = load_dataset("mnist", str(tmp_path))
    ds = load_dataset("mnist", str(tmp_path), channels=3, resize=32)
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert torch.equal(ds.x_train[:, 0], ds.x_train[:, 2]) and len(ds.mean) == 3 and ds.mean[1] == plain.mean[0]
    assert np.isclose(ds.x_train.float().mean().item(), plain.x_train.float().mean().item(), rtol=0.02)


def test_unknown_dataset(tmp_path):
    with pytest.raises(TeliError, match="unknown dataset 'cifar11'.*cifar10"):
        load_dataset("cifar11", str(tmp_path))


PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_validate_and_reach_the_data_step(preset, tmp_path, capsys):
    from teli.config import load_config
    from teli.models import build_model, count_parameters

    cfg = load_config(preset)
    assert f"{cfg.data.dataset}-{cfg.data.labels_per_class}" == preset.stem
    shape = (1, 28, 28) if cfg.data.dataset == "fashion-mnist" else (3, 32, 32)
    params = count_parameters(build_model(cfg.student.model, shape, 10))
    assert 0.8e6 < params < 3e6 and len({m.arch for m in cfg.teachers.models}) >= 2
    # valid config, no data under an empty data_root: the one-line missing-dataset error, exit 2
    assert main(["run", "--config", str(preset), "--data-root", str(tmp_path), "--accelerator", "cpu", "--quiet"]) == 2
    assert f"dataset '{cfg.data.dataset}' not found" in capsys.readouterr().err


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"fashion-mnist-10", "fashion-mnist-100", "cifar10-4", "cifar10-25"}


def test_runs_unpacking_and_caching_into_one_data_root_at_once_do_not_collide(tmp_path):
    # two bench suites started together share data/: each must get whole files (once they shared one ".part")
    import gzip
    import threading

    from teli.data.cache import cached_arrays

    payload = np.random.default_rng(0).integers(0, 256, 8_000_000, dtype=np.uint8).tobytes()
    src = tmp_path / "train-images-idx3-ubyte.gz"
    src.write_bytes(gzip.compress(payload, compresslevel=1))
    (tmp_path / "raw").mkdir()
    arrays = {"x": np.frombuffer(payload, dtype=np.uint8)}
    errors, got = [], []
    start = threading.Barrier(4)

    def one_run():
        try:
            start.wait()
            tvs._gunzip(src, tmp_path / "raw" / "train-images-idx3-ubyte")
            got.append(cached_arrays(tmp_path, "fake", [src], lambda: dict(arrays))["x"])
        except Exception as err:  # noqa: BLE001 - collected and shown below
            errors.append(repr(err))

    threads = [threading.Thread(target=one_run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / "raw" / "train-images-idx3-ubyte").read_bytes() == payload
    assert len(got) == 4 and all(np.array_equal(x, arrays["x"]) for x in got)
    assert np.array_equal(cached_arrays(tmp_path, "fake", [src], lambda: {})["x"], arrays["x"])  # a whole cache was kept
    leftovers = [p.name for p in [*tmp_path.joinpath("raw").iterdir(), *tmp_path.joinpath(".teli-cache").iterdir()]
                 if p.name.endswith(".part")]
    assert leftovers == []
