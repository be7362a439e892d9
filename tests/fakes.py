"""Small data files in the formats real data sets use, so their loaders run offline."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    # IDX format: 0, 0, type code (0x08 = uint8), number of dims, then big-endian uint32 sizes and the data.
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", train: int = 6, test: int = 4) -> dict[str, np.ndarray]:
    """Raw, uncompressed MNIST-layout files under root/folder/raw; returns the images written."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (train, 28, 28)), "t10k": rng.integers(0, 256, (test, 28, 28))}
    for split, x in images.items():
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(x)) % 10)
    return images


def make_images(root: Path, counts: dict[str, int], size: int = 6) -> None:
    """An ImageFolder tree: root/<class>/<i>.png with random RGB pixels."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


HF_CLASSES = ["cat", "dog", "fox"]


def hf_split(rows: int, seed: int, images: bool = True) -> Any:
    """A Hugging Face Dataset of `rows` rows: random 8 x 8 RGB images in `image` (a datasets.Image)
    and a ClassLabel `label`, or a vector of 10 numbers per row in `features` and string labels in
    `kind`. Row i has class i % 3."""
    import datasets

    rng = np.random.default_rng(seed)
    if images:
        pictures = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(rows)]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=HF_CLASSES)})
        return datasets.Dataset.from_dict({"image": pictures, "label": [i % 3 for i in range(rows)]}, features=features)
    return datasets.Dataset.from_dict({"features": rng.normal(size=(rows, 10)).astype(np.float32),
                                       "kind": [HF_CLASSES[i % 3] for i in range(rows)]})


def write_hf(root: Path, splits: dict[str, int], parquet: bool = False, images: bool = True) -> Path:
    """The splits (name: rows, see hf_split) as a save_to_disk folder root/saved, or as Parquet files
    named as the Hugging Face Hub names them, root/parquet/<split>-00000-of-00001.parquet."""
    import datasets

    tables = {name: hf_split(rows, seed, images) for seed, (name, rows) in enumerate(splits.items())}
    if not parquet:
        datasets.DatasetDict(tables).save_to_disk(str(root / "saved"))
        return root / "saved"
    (root / "parquet").mkdir(parents=True)
    for name, table in tables.items():
        table.to_parquet(str(root / "parquet" / f"{name}-00000-of-00001.parquet"))
    return root / "parquet"


class PlantsMarker:
    """Unpickling this creates `marker`: the proof that a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))
