import gzip

import numpy as np
import pytest
from PIL import Image

from mrl.data import load_dataset
from mrl.data.datasets import FASHION_MNIST_DIR, IDX_FILES
from mrl.data.idx import read_idx
from mrl.errors import MRLError


def test_idx_reader_on_real_fashion_mnist():
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert labels.shape == (10000,) and images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10  # the official test set is balanced
    assert images.dtype == np.uint8 and images.max() == 255


def test_split_is_fixed_disjoint_and_standardised(fashion_subset_dir):
    a = load_dataset("mnist", data_dir=fashion_subset_dir)
    b = load_dataset("mnist", data_dir=fashion_subset_dir)
    assert (len(a.train), len(a.val), len(a.test)) == (2750, 250, 500)
    assert np.array_equal(a.val.x.numpy(), b.val.x.numpy())
    assert abs(float(a.train.x.mean())) < 1e-5 and abs(float(a.train.x.std()) - 1) < 1e-3
    # val rows are not train rows (the real data has no exact duplicates across this split)
    train_rows = {r.tobytes() for r in a.train.x.numpy().reshape(len(a.train), -1)}
    assert not any(r.tobytes() in train_rows for r in a.val.x.numpy().reshape(len(a.val), -1))


def test_max_train_subsamples_reproducibly(fashion_subset_dir):
    a = load_dataset("mnist", data_dir=fashion_subset_dir, max_train=100)
    b = load_dataset("mnist", data_dir=fashion_subset_dir, max_train=100)
    assert len(a.train) == 100 and np.array_equal(a.train.y.numpy(), b.train.y.numpy())


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    data = load_dataset(str(tmp_path / "d.npz"))
    assert data.kind == "vector" and data.num_classes == 2
    assert len(data.train) + len(data.val) + len(data.test) == 400
    assert data.input_shape == (6,)


def test_image_folder(tmp_path, fashion_subset_dir):
    images = read_idx(fashion_subset_dir / "t10k-images-idx3-ubyte.gz")[:60]
    labels = read_idx(fashion_subset_dir / "t10k-labels-idx1-ubyte.gz")[:60]
    for i, (img, lab) in enumerate(zip(images, labels)):
        (tmp_path / f"class{lab}").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / f"class{lab}" / f"{i}.png")
    data = load_dataset(str(tmp_path))
    assert data.kind == "image" and data.input_shape == (1, 28, 28)
    assert len(data.train) + len(data.val) + len(data.test) == 60


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (dict(X=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64)), "holds no examples"),
        (dict(X=np.array([[1.0, np.nan]] * 20), y=np.zeros(20, np.int64)), "NaN or infinite"),
        (dict(X=np.zeros((20, 3)), y=np.zeros(19, np.int64)), "20 inputs but 19 labels"),
        (dict(X=np.zeros((20, 3)), y=np.zeros(20, np.float32)), "labels must be integers"),
        (dict(X=np.zeros(20), y=np.zeros(20, np.int64)), "X must be 2-D"),
        (dict(features=np.zeros((20, 3))), r"lacks array\(s\) \['X', 'y'\]"),
    ],
)
def test_bad_npz_inputs(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MRLError, match=match):
        load_dataset(str(tmp_path / "bad.npz"))


def test_missing_and_corrupt_idx(tmp_path, fashion_subset_dir):
    with pytest.raises(MRLError, match="does not exist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nope")
    with pytest.raises(MRLError, match="missing data file train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    for stem in IDX_FILES.values():
        (tmp_path / f"{stem}.gz").write_bytes((fashion_subset_dir / f"{stem}.gz").read_bytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x0b\xb8" + b"\x01" * 10)  # claims 3000 labels, holds 10
    with pytest.raises(MRLError, match="truncated or corrupt"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MRLError, match="cannot read"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_unknown_dataset():
    with pytest.raises(MRLError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
