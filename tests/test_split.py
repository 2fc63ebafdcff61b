"""The labelled/val/unlabelled split, the digits dataset, batched augmentation and index batches."""

from __future__ import annotations

import pytest
import torch

from teli.data import RandomBatches, load_dataset, split_pool, weak_augment
from teli.errors import TeliError


def toy_labels(per_class=(10, 12, 8)) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_split_exactly_k_per_class_and_val_per_class():
    y = toy_labels()
    s = split_pool(y, 3, labels_per_class=3, val_per_class=2, seed=0)
    assert torch.bincount(y[s.labelled], minlength=3).tolist() == [3, 3, 3]
    assert torch.bincount(y[s.val], minlength=3).tolist() == [2, 2, 2]


def test_split_is_disjoint_and_covers_the_pool():
    y = toy_labels()
    s = split_pool(y, 3, 3, 2, seed=0)
    parts = [set(s.labelled.tolist()), set(s.val.tolist()), set(s.unlabelled.tolist())]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert parts[0] | parts[1] | parts[2] == set(range(len(y)))
    assert len(s.unlabelled) == len(y) - 15


def test_split_seeded():
    y = toy_labels((40, 40, 40))
    a = split_pool(y, 3, 5, 1, seed=7)
    b = split_pool(y, 3, 5, 1, seed=7)
    c = split_pool(y, 3, 5, 1, seed=8)
    assert torch.equal(a.labelled, b.labelled) and torch.equal(a.val, b.val) and torch.equal(a.unlabelled, b.unlabelled)
    assert not torch.equal(a.labelled, c.labelled)


def test_split_no_val_gives_empty_val():
    s = split_pool(toy_labels(), 3, 2, 0, seed=0)
    assert len(s.val) == 0 and len(s.labelled) == 6


def test_split_class_too_small():
    y = toy_labels((10, 12, 8))
    split_pool(y, 3, 8, 0, seed=0)  # class 2 has exactly 8: fine
    with pytest.raises(TeliError, match="class 2 has 8"):
        split_pool(y, 3, 9, 0, seed=0)
    with pytest.raises(TeliError, match="class 2"):
        split_pool(y, 3, 6, 3, seed=0)  # k + val = 9 > 8


def test_split_labels_per_class_zero():
    with pytest.raises(TeliError, match="labels_per_class"):
        split_pool(toy_labels(), 3, 0, 0, seed=0)


def test_split_every_image_labelled_is_an_error():
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(TeliError, match="unlabelled set is empty"):
        split_pool(y, 2, 2, 0, seed=0)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_dtype(digits):
    assert digits.x_train.dtype == torch.uint8 and digits.x_test.dtype == torch.uint8
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.x_test.shape[1:] == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert len(digits.x_train) == len(digits.y_train) and len(digits.x_test) == len(digits.y_test)
    assert digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and set(digits.y_test.tolist()) == set(range(10))
    assert digits.x_train.max() > 200  # rescaled from 0..16 to 0..255
    assert digits.hflip is False
    assert digits.input_shape == (1, 8, 8)


def test_digits_test_split_is_fixed(digits):
    again = load_dataset("digits")
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_test, digits.y_test)


def test_digits_test_split_independent_of_run_seed(tmp_path):
    from teli.config import build_config
    from teli.pipeline import prepare_data

    a = prepare_data(build_config(overrides={"seed": 0}))
    b = prepare_data(build_config(overrides={"seed": 5}))
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_l, b.x_l)  # ... while the labelled draw follows the seed
    pool = len(a.x_l) + len(a.x_val) + len(a.x_u)
    assert pool == len(load_dataset("digits").x_train)


def test_unknown_dataset():
    with pytest.raises(TeliError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# ---------------------------------------------------------------------------------------------
# weak_augment


def _images(b=6, c=2, h=8, w=8):
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


def test_weak_augment_identity_without_pad_and_flip():
    x = _images()
    assert torch.equal(weak_augment(x, 0, False, torch.Generator().manual_seed(0)), x)


def test_weak_augment_is_a_pure_translation():
    x = _images(b=32)
    out = weak_augment(x, 1, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    shifts_seen = set()
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i : i + 1], (1, 1, 1, 1), mode="reflect")[0]
        matches = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(padded[:, dy : dy + 8, dx : dx + 8], out[i])]
        assert matches, f"image {i} is not a translated crop of the padded input"
        shifts_seen.add(matches[0])
    assert len(shifts_seen) > 1  # shifts are random per image, not one for the batch


def test_weak_augment_flips_only_when_asked():
    x = _images(b=64, c=1)
    gen = torch.Generator().manual_seed(0)
    out = weak_augment(x, 0, True, gen)
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54  # about half
    never = weak_augment(x, 0, False, torch.Generator().manual_seed(0))
    assert torch.equal(never, x)


def test_weak_augment_seeded():
    x = _images(b=16)
    a = weak_augment(x, 2, True, torch.Generator().manual_seed(3))
    b = weak_augment(x, 2, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# RandomBatches


def test_random_batches_cover_every_index_once_per_pass():
    batches = RandomBatches(10, 5, torch.Generator().manual_seed(0))
    first_pass = torch.cat([next(batches), next(batches)])
    assert sorted(first_pass.tolist()) == list(range(10))
    second_pass = torch.cat([next(batches), next(batches)])
    assert sorted(second_pass.tolist()) == list(range(10))
    assert not torch.equal(first_pass, second_pass)  # a fresh permutation each pass


def test_random_batches_batch_larger_than_n():
    batches = RandomBatches(3, 7, torch.Generator().manual_seed(0))
    b = next(batches)
    assert len(b) == 7 and set(b.tolist()) == {0, 1, 2}
    counts = torch.bincount(torch.cat([b] + [next(batches) for _ in range(2)]), minlength=3)
    assert counts.tolist() == [7, 7, 7]  # 21 indices = exactly 7 passes over 3 items
