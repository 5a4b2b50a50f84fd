"""Calibration and evaluation data: .npz/.npy files, image folders, or any Python iterable.

A `Dataset` knows the model's inputs and yields feed dicts batch by batch, so calibration
never holds more than one batch of intermediate tensors. Files are read with
`np.load(allow_pickle=False)` and checked against the model before anything runs: names,
shapes (sample axis first), dtypes, finiteness, emptiness and constant arrays, with every
problem reported in one message (CalibrationDataError, exit code 5).
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from qcompiler.errors import CalibrationDataError, UsageError
from qcompiler.ir import Model

log = logging.getLogger("qcompiler")

#: torchvision's ImageNet normalization (`--preprocess imagenet`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


@dataclasses.dataclass(frozen=True)
class InputInfo:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, or None for symbolic dimensions; shape[0] is the batch dimension


def sample_bytes(model: Model, names) -> int:
    """Bytes one sample of the named float32 tensors takes (symbolic dimensions count as 1): for
    sizing batches and caches to a memory budget."""
    tensors = model.tensors()
    total = 0
    for name in names:
        shape = (tensors[name].shape or ()) if name in tensors else ()
        total += 4 * int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]] or [1]))
    return total


def model_inputs(model: Model) -> list[InputInfo]:
    return [InputInfo(t.name, np.dtype(t.dtype), tuple(d if isinstance(d, int) and d > 0 else None for d in t.shape or ()))
            for t in model.graph.inputs]


class Dataset:
    """Samples for a model's inputs: `arrays[name]` has the sample axis first."""

    def __init__(self, arrays: dict[str, np.ndarray], inputs: list[InputInfo], labels: np.ndarray | None = None,
                 source: str = "data") -> None:
        self.arrays, self.inputs, self.labels, self.source = arrays, inputs, labels, source
        self.count = len(next(iter(arrays.values())))

    def batch_limit(self) -> int | None:
        """The batch size the model fixes (its first dimension), if any."""
        fixed = {i.shape[0] for i in self.inputs if i.shape and i.shape[0] is not None}
        return min(fixed) if fixed else None

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        fixed = self.batch_limit()
        size = fixed or batch_size
        stop = self.count - self.count % size if fixed else self.count  # a fixed batch takes whole batches only
        for start in range(0, stop, size):
            yield {i.name: self.arrays[i.name][start:start + size] for i in self.inputs}

    def update_digest(self, digest) -> None:
        """Feed the samples (and labels) to a hashlib digest: a cache key of what they measure."""
        for name in sorted(self.arrays):
            digest.update(f"{name} {self.arrays[name].shape}".encode())
            digest.update(np.ascontiguousarray(self.arrays[name]).tobytes())
        if self.labels is not None:
            digest.update(np.asarray(self.labels).tobytes())

    def head(self, count: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:count]
        return Dataset({k: v[:count] for k, v in self.arrays.items()}, self.inputs, labels, self.source)


def load_data(source, model: Model, *, what: str = "calibration", preprocess: ImagePreprocess | None = None,
              limit: int | None = None) -> Dataset:
    """A Dataset from a .npz/.npy path, an image folder, a dict of arrays, or an iterable of feed dicts."""
    inputs = model_inputs(model)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            arrays, labels = read_image_folder(path, inputs, preprocess or ImagePreprocess(), limit)
        else:
            arrays, labels = read_array_file(path, inputs)
        name = str(path)
    elif isinstance(source, dict):
        arrays, labels, name = {k: np.asarray(v) for k, v in source.items()}, None, f"{what} arrays"
        labels = arrays.pop("labels", None)
    elif isinstance(source, Iterable):
        arrays, labels, name = _from_iterable(source, inputs, limit), None, f"{what} iterator"
    else:
        raise CalibrationDataError(f"{what} data: expected a .npz/.npy path, an image folder, a dict of arrays "
                                   f"or an iterable of feed dicts, not {type(source).__name__}")
    if limit is not None:
        arrays = {k: v[:limit] for k, v in arrays.items()}
        labels = None if labels is None else labels[:limit]
    arrays = check_arrays(arrays, inputs, name, what)
    if labels is not None and len(labels) != len(next(iter(arrays.values()))):
        raise CalibrationDataError(f"{name}: 'labels' has {len(labels)} entries for {len(next(iter(arrays.values())))} samples")
    dataset = Dataset(arrays, inputs, labels, name)
    fixed = dataset.batch_limit()
    if fixed and dataset.count < fixed:
        raise CalibrationDataError(f"{name}: the model's batch dimension is fixed at {fixed}, but there are only "
                                   f"{dataset.count} samples; give at least {fixed}")
    return dataset


def read_array_file(path: Path, inputs: list[InputInfo]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if not path.exists():
        raise CalibrationDataError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not (magic.startswith(b"PK\x03\x04") or magic == b"\x93NUMPY"):
        # Anything else np.load would hand to pickle: refuse before it gets the chance.
        raise CalibrationDataError(f"{path}: not a numpy .npz/.npy file (it starts with {magic!r}); "
                                   "save the data with np.savez")
    try:
        if path.suffix == ".npy":
            if len(inputs) != 1:
                raise CalibrationDataError(f"{path}: a .npy holds one array but the model has inputs "
                                           f"{[i.name for i in inputs]}; use a .npz with one array per input")
            with open(path, "rb") as f:
                _check_npy_header(f, path.stat().st_size, str(path))
            # memory-mapped: training and calibration read the samples of each batch, not the whole file
            arrays = {inputs[0].name: np.load(path, mmap_mode="r", allow_pickle=False)}
        else:
            arrays = _read_npz(path)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CalibrationDataError(f"{path}: holds pickled Python objects, which are never loaded; "
                                       "save plain numeric arrays (np.savez)") from None
        raise CalibrationDataError(f"{path}: not a readable numpy file: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise CalibrationDataError(f"{path}: corrupt or not a numpy .npz/.npy file ({type(exc).__name__}: {exc})") from None
    labels = arrays.pop("labels", None)
    return arrays, labels


#: numpy dtype kinds a data file may hold: bool, integers, floats (no objects, strings, records).
DATA_KINDS = "biuf"


def _check_npy_header(f, available: int, where: str) -> int:
    """Validate a .npy header before numpy allocates what it claims: a plain numeric dtype, and
    a size that the bytes after the header really hold. Returns the array's size in bytes."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        shape, fortran, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise CalibrationDataError(f"{where}: not a valid .npy header ({exc})") from None
    if dtype.hasobject:
        raise CalibrationDataError(f"{where}: holds pickled Python objects, which are never loaded; "
                                   "save plain numeric arrays (np.savez)")
    if dtype.kind not in DATA_KINDS or dtype.fields:
        raise CalibrationDataError(f"{where}: holds {dtype} values; calibration data must be numbers "
                                   "(float, integer or bool arrays)")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > available - f.tell():
        raise CalibrationDataError(f"{where}: the header claims {list(shape)} {dtype} ({nbytes} bytes) but the file "
                                   f"holds {max(available - f.tell(), 0)} bytes after it: truncated or forged")
    return nbytes


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz, each member's header checked against the size the archive records
    for it and their total against this machine's memory, before anything is decompressed."""
    with zipfile.ZipFile(path) as archive:
        total = 0
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                raise CalibrationDataError(f"{path}: member {member.filename!r} is not a .npy array")
            with archive.open(member) as f:
                total += _check_npy_header(f, member.file_size, f"{path}:{member.filename}")
        limit = _memory_bytes() // 2
        if total > limit:
            raise CalibrationDataError(f"{path}: its arrays take {total / 2**30:.1f} GiB, more than half this machine's "
                                       f"memory; use fewer samples (or --calib-count)")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_arrays(arrays: dict[str, np.ndarray], inputs: list[InputInfo], name: str, what: str) -> dict[str, np.ndarray]:
    """Every mismatch between the arrays and the model's inputs, in one error; float inputs cast to the model's dtype."""
    problems = []
    missing = [i.name for i in inputs if i.name not in arrays]
    if missing:
        problems.append(f"missing arrays for inputs {missing} (found {sorted(arrays)})")
    checked = {}  # arrays that are not inputs (labels, indices) are ignored here
    counts = set()
    for info in inputs:
        if info.name not in arrays:
            continue
        array = _cast(info, arrays[info.name], name)
        problems += _check_one(info, array)
        counts.add(len(array) if array.ndim else 0)
        checked[info.name] = array
    if len(counts) > 1:
        problems.append(f"inputs have different sample counts {sorted(counts)}")
    if problems:
        raise CalibrationDataError(f"{name}: {what} data does not fit the model: " + "; ".join(problems))
    return checked


def _cast(info: InputInfo, array: np.ndarray, source: str) -> np.ndarray:
    """Numbers for a float input become the input's dtype (integers with a warning: their values
    are taken as they are, not scaled); anything else is left for _check_one to refuse."""
    if info.dtype.kind != "f" or array.dtype.kind not in DATA_KINDS or array.dtype == info.dtype:
        return array
    if array.dtype.kind != "f" and array.size:
        log.warning("%s: '%s' is %s; cast to %s as it is (values %s..%s, not scaled): scale it first if the model "
                    "expects normalized inputs", source, info.name, array.dtype, info.dtype, array.min(), array.max())
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(info.dtype)
    if array.dtype.kind == "f" and np.isfinite(array).all() and not np.isfinite(cast).all():
        raise CalibrationDataError(f"{source}: '{info.name}' has values beyond {info.dtype}'s range (largest "
                                   f"magnitude {float(np.abs(array).max()):.3g}); the model computes in {info.dtype}")
    return cast


def _check_one(info: InputInfo, array: np.ndarray) -> list[str]:
    problems = []
    if array.dtype == object:
        return [f"'{info.name}' holds Python objects"]
    if array.ndim != len(info.shape):
        return [f"'{info.name}' has shape {list(array.shape)}, the model expects rank {len(info.shape)} "
                f"{[d if d is not None else 'N' for d in info.shape]} (samples first)"]
    if len(array) == 0:
        return [f"'{info.name}' is empty (0 samples)"]
    wrong = [(axis, got, want) for axis, (got, want) in enumerate(zip(array.shape[1:], info.shape[1:]), 1)
             if want is not None and got != want]
    if wrong:
        problems.append(f"'{info.name}' has shape {list(array.shape)}, the model expects "
                        f"{['N'] + [d if d is not None else '?' for d in info.shape[1:]]}")
    if info.dtype.kind != array.dtype.kind:
        problems.append(f"'{info.name}' is {array.dtype}, the model expects {info.dtype}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(array), -1).any(axis=1))[0, 0])
            problems.append(f"'{info.name}' has {int(bad.sum())} NaN/Inf values (first in sample {first})")
    if array.size and not problems and float(array.max()) == float(array.min()):
        problems.append(f"'{info.name}' is constant (every value {float(array.flat[0])}): it says nothing about ranges")
    return problems


def _from_iterable(source: Iterable, inputs: list[InputInfo], limit: int | None) -> dict[str, np.ndarray]:
    """Collect feed dicts (or bare arrays, for one-input models) of one or more samples each."""
    chunks: dict[str, list[np.ndarray]] = {i.name: [] for i in inputs}
    total = 0
    for item in source:
        if not isinstance(item, dict):
            if len(inputs) != 1:
                raise CalibrationDataError(f"the iterator yields {type(item).__name__}; a model with several inputs needs dicts")
            item = {inputs[0].name: item}
        for info in inputs:
            if info.name not in item:
                raise CalibrationDataError(f"the iterator's item has no '{info.name}' (keys {sorted(item)})")
            value = np.asarray(item[info.name])
            chunks[info.name].append(value if value.ndim == len(info.shape) else value[None])
        total += len(chunks[inputs[0].name][-1])
        if limit is not None and total >= limit:
            break
    if total == 0:
        raise CalibrationDataError("the calibration iterator yielded no samples")
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How image files become model inputs: resize the short side, centre-crop, scale, normalize.

    `parse("resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,color=RGB")`
    or a named one: `imagenet` (the values above), `none` (resize/crop to the model's input size).
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    color: str | None = None   # RGB or L (greyscale); None: what the model's channel count says

    @classmethod
    def parse(cls, text: str) -> ImagePreprocess:
        """The preprocessing a `--preprocess` text names; a UsageError that names the bad key or value."""
        if text == "imagenet":
            return cls(256, 224, IMAGENET_MEAN, IMAGENET_STD)
        if text in ("", "none"):
            return cls()
        fields = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            if key not in ("resize", "crop", "mean", "std", "layout", "color"):
                raise UsageError(f"--preprocess {text!r}: unknown key {key!r} (resize, crop, mean, std, layout, color)")
            fields[key] = _preprocess_value(key, value.strip(), text)
        return cls(**fields)

    def apply(self, image, size: tuple[int, int]) -> np.ndarray:
        """A PIL image to a float32 array (C x H x W for NCHW), `size` the model's (H, W)."""
        from PIL import Image

        image = image.convert(self.color or "RGB")
        if self.resize:
            w, h = image.size
            factor = self.resize / min(w, h)
            image = image.resize((round(w * factor), round(h * factor)), Image.BILINEAR)
        crop = self.crop or min(image.size)
        w, h = image.size
        left, top = (w - crop) // 2, (h - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        pixels = np.asarray(image, np.float32) / 255.0
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return pixels.transpose(2, 0, 1) if self.layout == "NCHW" else pixels


def _preprocess_value(key: str, value: str, text: str):
    def bad(why: str):
        return UsageError(f"--preprocess {text!r}: {key}={value!r} {why}")

    if key in ("resize", "crop"):
        if not value.isdigit() or not 0 < int(value) <= 16384:
            raise bad("must be a pixel count from 1 to 16384")
        return int(value)
    if key in ("mean", "std"):
        try:
            numbers = tuple(float(v) for v in value.split("/"))
        except ValueError:
            raise bad("must be numbers separated by '/'") from None
        if len(numbers) not in (1, 3) or not all(np.isfinite(numbers)) or (key == "std" and 0.0 in numbers):
            raise bad("must be 1 or 3 finite numbers" + (", none zero" if key == "std" else ""))
        return numbers
    choices = ("NCHW", "NHWC") if key == "layout" else ("RGB", "L")
    if value.upper() not in choices:
        raise bad(f"must be one of {', '.join(choices)}")
    return value.upper()


def read_image_folder(folder: Path, inputs: list[InputInfo], preprocess: ImagePreprocess,
                      limit: int | None) -> tuple[dict[str, np.ndarray], None]:
    """Images under `folder` (recursively, sorted) for a one-input image model."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise CalibrationDataError(f"{folder}: image folders feed models with one 4-D input; "
                                   f"this one has {[(i.name, i.shape) for i in inputs]}")
    info = inputs[0]
    h, w = (info.shape[2], info.shape[3]) if preprocess.layout == "NCHW" else (info.shape[1], info.shape[2])
    if h is None or w is None:
        if not preprocess.crop:
            raise CalibrationDataError(f"{folder}: the model's input size is symbolic; give --preprocess crop=SIZE")
        h = w = preprocess.crop
    channels = info.shape[1] if preprocess.layout == "NCHW" else info.shape[3]
    if preprocess.color is None:
        preprocess = dataclasses.replace(preprocess, color="L" if channels == 1 else "RGB")
    samples = [_read_image(path, preprocess, (h, w)) for path in image_files(folder, limit)]
    return {info.name: np.stack(samples).astype(info.dtype)}, None


def image_files(folder: Path, limit: int | None) -> list[Path]:
    """The image files under `folder`, sorted, walked without following links: a link (to a file
    or folder) is skipped with a warning, so that no file outside the folder is read."""
    import os

    found, links = [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            path = Path(root) / name
            if path.is_symlink():
                links.append(path)
            elif name in names and path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
    if links:
        log.warning("%s: %d links skipped (e.g. %s); image folders are read without following links",
                    folder, len(links), links[0])
    found = sorted(found)[:limit]
    if not found:
        raise CalibrationDataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return found


#: Larger images are refused before they are decoded (a small file can claim a huge size).
MAX_IMAGE_PIXELS = 8192 * 8192


def _read_image(path: Path, preprocess: ImagePreprocess, size: tuple[int, int]) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise CalibrationDataError(f"{path}: {image.width}x{image.height} pixels, over the limit of "
                                               f"{MAX_IMAGE_PIXELS} for one image; resize it first")
                return preprocess.apply(image, size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CalibrationDataError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CalibrationDataError(f"{path}: not a readable image ({exc})") from None
