"""Readers that turn a ``--data`` source into labelled pools of images (for ``automl.data.load``).

Each reader returns a :class:`RawData`: class names plus one :class:`Pool` per split the source
provides itself ("train", and possibly "validation" / "test"). Pools hold either an in-memory
uint8 array or a list of image files checked to be decodable. ``automl.data.load`` carves missing
splits out of "train" and wraps the pools in ``Split`` objects.

Every problem with the user's data is raised as :class:`DataError`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from automl.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_EXT_TEXT = ".jpg, .jpeg, .png, .bmp or .gif"
_IGNORED_DIRS = {"__MACOSX"}  # macOS zip debris, never a class

ANIMAL_MNIST_CLASSES = ["bear", "bird", "cat", "cow", "dog",
                        "elephant", "giraffe", "horse", "sheep", "zebra"]
KERAS_DATASETS: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
    "cifar100": """
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge
        bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud
        cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox
        girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
        maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
        pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
        road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
        streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
        trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split(),
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
_NPZ_SPLITS = (("train", "x_train", "y_train"), ("validation", "x_val", "y_val"),
               ("test", "x_test", "y_test"))


@dataclass
class Pool:
    """The labelled images of one split as the source provides it (before any carving)."""

    where: str                        # for messages, e.g. "folder '/d/train'" or "x_val/y_val"
    labels: np.ndarray                # int32 (n,)
    digest: str                       # hash of the content, part of Datasets.fingerprint
    array: np.ndarray | None = None   # uint8 (n, h, w, 1 or 3), in memory
    paths: list[str] | None = None    # image files, decodable
    use_pil: np.ndarray | None = None  # bool (n,): decode this file with PIL, not TensorFlow
    origin: str = ""                  # an array pool's name for its images, e.g. "x_train"

    def content_hashes(self) -> np.ndarray:
        """One content hash per image (of a file's bytes, or of an array image), in order; equal
        hashes mean byte-identical images (automl.trust.leakage.content_hash)."""
        from automl.trust.leakage import content_hash

        if self.array is not None:
            return np.array([content_hash(image) for image in self.array], dtype="U32")
        out = []
        for path in self.paths or []:
            try:
                out.append(content_hash(Path(path).read_bytes()))
            except OSError as exc:
                raise DataError(f"Image file '{path}' cannot be read ({exc.strerror}).") from exc
        return np.array(out, dtype="U32")


@dataclass
class RawData:
    class_names: list[str]
    pools: dict[str, Pool]            # "train" always; "validation" / "test" if provided
    skipped: list[str] = field(default_factory=list)


def _digest(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def array_pool(where: str, x: np.ndarray, y: np.ndarray, origin: str) -> Pool:
    """A pool of in-memory images; ``origin`` names the array for the user (``x_train``)."""
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=np.int32)
    return Pool(where, y, _digest(str(x.shape), x.tobytes(), y.tobytes()), array=x,
                origin=origin)


# ---------------------------------------------------------------- embedded default: Animal-MNIST

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global (no code execution)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        if name == "_reconstruct":
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:  # numpy < 2
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        return getattr(np, name)


def _unpickle_array(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            value = _NumpyOnlyUnpickler(fh).load()
    except Exception as exc:
        raise DataError(f"The embedded Animal-MNIST file '{path}' cannot be read ({exc}); "
                        "reinstall it with `pip install --force-reinstall animal-mnist`.") from exc
    if not isinstance(value, np.ndarray):
        raise DataError(f"The embedded Animal-MNIST file '{path}' does not hold a numpy array.")
    return value


def read_animal_mnist() -> RawData:
    """The 10,000 28x28 grayscale silhouettes bundled in the ``animal_mnist`` wheel."""
    try:
        spec = importlib.util.find_spec("animal_mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The embedded default dataset needs the Animal-MNIST package, which is not "
                        "installed: run `pip install animal-mnist`, or pass --data with a folder "
                        "of class sub-folders or an .npz file.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    x = _unpickle_array(folder / "animal_data_version_3.gz")
    y = _unpickle_array(folder / "animal_label_version_3.gz")
    k = len(ANIMAL_MNIST_CLASSES)
    if (x.dtype != np.uint8 or x.ndim != 3 or y.shape != (len(x),) or y.dtype.kind not in "iu"
            or len(x) == 0 or y.min() < 0 or y.max() >= k):
        raise DataError(f"The embedded Animal-MNIST files in '{folder}' have unexpected contents "
                        f"(images {x.shape} {x.dtype}, labels {y.shape} {y.dtype}); reinstall with "
                        "`pip install --force-reinstall animal-mnist`.")
    return RawData(list(ANIMAL_MNIST_CLASSES),
                   {"train": array_pool("the Animal-MNIST images", x[..., None], y,
                                        "animal_mnist")})


# ------------------------------------------------------------------------------------- .npz

def read_npz(path: Path) -> RawData:
    """Arrays x_train/y_train (+ optional x_val/y_val, x_test/y_test, class_names).

    Images: shape (n,h,w), (n,h,w,1), (n,h,w,3) or (n,h,w,4) (alpha is dropped). uint8, or any
    integer type with values in 0..255, or float. Float images are finite values in [0, 255];
    if every float x array of the file lies within [0, 1] they are all taken as 0..1 intensities
    and multiplied by 255. Values are rounded to uint8.
    Labels: integers 0..k-1 of shape (n,) or (n,1) (integral floats accepted), or one-hot (n,k).
    Class names: a 1-D string array ``class_names`` of length k, else "0".."k-1".
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"'{path}' cannot be read as an .npz archive ({type(exc).__name__}: "
                        f"{exc}). Expected a file written by numpy.savez or "
                        "numpy.savez_compressed.") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"'{path}' holds a single array, not an .npz archive of named arrays; "
                        "expected x_train and y_train (save them with numpy.savez).")
    with npz:
        keys = set(npz.files)
        missing = [k for k in ("x_train", "y_train") if k not in keys]
        if missing:
            raise DataError(f"'{path}' has no {' and no '.join(missing)} array; found "
                            f"{sorted(keys) or 'no arrays'}. Expected x_train and y_train, "
                            "plus optional x_val/y_val, x_test/y_test and class_names.")
        raw_x, raw_y = {}, {}
        for split, xk, yk in _NPZ_SPLITS:
            if (xk in keys) != (yk in keys):
                have, lack = (xk, yk) if xk in keys else (yk, xk)
                raise DataError(f"'{path}' has {have} but no {lack}; images and labels of a "
                                "split must come together.")
            if xk in keys:
                raw_x[split], raw_y[split] = _npz_array(npz, xk, path), _npz_array(npz, yk, path)
        names = _npz_class_names(npz, path) if "class_names" in keys else None

    floats = [x for x in raw_x.values() if x.dtype.kind == "f"]
    scale01 = bool(floats) and all(x.size and np.all(np.isfinite(x)) and x.min() >= 0
                                   and x.max() <= 1 for x in floats)
    xs, ys, widths = {}, {}, set()
    for split, xk, yk in _NPZ_SPLITS:
        if split in raw_x:
            xs[split] = _npz_images(raw_x[split], xk, path, scale01)
            ys[split], width = _npz_labels(raw_y[split], yk, len(xs[split]), xk, path)
            if width is not None:
                widths.add(width)
    if len(widths) > 1:
        raise DataError(f"The one-hot label arrays in '{path}' have different widths "
                        f"{sorted(widths)}; every split must use the same number of classes.")
    top = max(int(y.max()) for y in ys.values())
    k = len(names) if names is not None else (widths.pop() if widths else top + 1)
    if names is not None and widths and widths != {k}:
        raise DataError(f"'{path}' has {k} class_names but one-hot labels of width "
                        f"{widths.pop()}; they must match.")
    if top >= k:
        raise DataError(f"'{path}' has label {top} but only {k} classes (from its class_names "
                        "or one-hot width); labels must be 0..k-1.")
    if k < 2:
        raise DataError(f"'{path}' has only one class (every label is 0); a classifier needs at "
                        "least two classes.")
    if k > len(ys["train"]):
        raise DataError(f"'{path}' has {k} classes (labels 0..{k - 1}) but only "
                        f"{len(ys['train'])} training images; every class needs images in y_train.")
    names = names if names is not None else [str(i) for i in range(k)]
    where = {"train": "x_train/y_train", "validation": "x_val/y_val", "test": "x_test/y_test"}
    origin = {split: xk for split, xk, _ in _NPZ_SPLITS}
    return RawData(names, {s: array_pool(f"{where[s]} in '{path}'", xs[s], ys[s], origin[s])
                           for s in xs})


def _npz_array(npz, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"Array '{key}' in '{path}' holds Python objects (pickled data), which "
                            "automl does not load for safety; save it as a numeric (or, for "
                            "class_names, string) array.") from exc
        raise DataError(f"Array '{key}' in '{path}' cannot be read ({exc}); the file may be "
                        "corrupt. Expected an archive written by numpy.savez.") from exc
    except Exception as exc:
        raise DataError(f"Array '{key}' in '{path}' cannot be read ({type(exc).__name__}: {exc}); "
                        "the file may be truncated or corrupt.") from exc


def _npz_class_names(npz, path: Path) -> list[str]:
    arr = _npz_array(npz, "class_names", path)
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise DataError(f"'class_names' in '{path}' has shape {arr.shape} and dtype {arr.dtype}; "
                        "expected a 1-D array of strings, one per class in label order.")
    try:
        names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    except UnicodeDecodeError as exc:
        raise DataError(f"'class_names' in '{path}' is not valid UTF-8 text.") from exc
    if any(not n for n in names) or len(set(names)) != len(names):
        raise DataError(f"'class_names' in '{path}' must be unique non-empty strings; got {names}.")
    return names


def _npz_images(x: np.ndarray, key: str, path: Path, scale01: bool) -> np.ndarray:
    expected = "expected (n, h, w), (n, h, w, 1), (n, h, w, 3) or (n, h, w, 4)"
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(f"Array '{key}' in '{path}' has shape {x.shape}, which is not a stack of "
                        f"images: {expected}.")
    if min(x.shape[:3]) == 0:
        raise DataError(f"Array '{key}' in '{path}' has shape {x.shape}: it holds no images or "
                        f"images of zero size; {expected} with n, h, w >= 1.")
    if x.dtype.kind in "iu":
        if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
            raise DataError(f"Array '{key}' in '{path}' ({x.dtype}) has values outside 0..255; "
                            "expected uint8 pixels.")
        x = x.astype(np.uint8, copy=False)
    elif x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DataError(f"Array '{key}' in '{path}' contains NaN or infinite values.")
        if x.min() < 0 or x.max() > 255:
            raise DataError(f"Array '{key}' in '{path}' has float values from {x.min():g} to "
                            f"{x.max():g}; expected 0..1 or 0..255.")
        x = np.clip(np.rint(x.astype(np.float32) * (255 if scale01 else 1)), 0, 255)
        x = x.astype(np.uint8)
    else:
        raise DataError(f"Array '{key}' in '{path}' has dtype {x.dtype}; expected uint8 or float "
                        "pixel values.")
    return x[..., :3] if x.shape[-1] == 4 else x


def _npz_labels(y: np.ndarray, key: str, n: int, xkey: str,
                path: Path) -> tuple[np.ndarray, int | None]:
    """Integer labels (n,) and the one-hot width (or None for integer labels)."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"Labels '{key}' in '{path}' have dtype {y.dtype}; expected integer class "
                        "indices or one-hot rows.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(f"Labels '{key}' in '{path}' have shape {y.shape} but '{xkey}' holds {n} "
                        f"images; expected shape ({n},) of class indices or ({n}, k) one-hot.")
    y = y.astype(np.float64) if y.dtype.kind == "f" else y.astype(np.int64)
    if y.ndim == 2:
        if y.shape[1] < 2 or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
            raise DataError(f"Labels '{key}' in '{path}' have shape {y.shape} but are not one-hot "
                            "rows (exactly one 1 per row, zeros elsewhere, at least 2 columns).")
        return np.argmax(y, axis=1).astype(np.int32), int(y.shape[1])
    if (not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or y.min() < 0
            or y.max() >= 2**31 - 1):
        raise DataError(f"Labels '{key}' in '{path}' must be whole-number class indices 0..k-1; "
                        f"found values from {y.min()} to {y.max()}.")
    return y.astype(np.int32), None


# ------------------------------------------------------------------------------ image folders

def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED_DIRS


def _subdirs(folder: Path) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise DataError(f"Folder '{folder}' cannot be listed ({exc}).") from exc
    return sorted(e.name for e in entries if _visible(e.name) and e.is_dir())


def _image_files(class_dir: Path) -> list[tuple[str, str]]:
    """(path, fingerprint id) of the image files below ``class_dir``, sorted, hidden ones out."""
    found = []
    for root, dirs, files in os.walk(class_dir, onerror=None):
        dirs[:] = [d for d in dirs if _visible(d)]
        for name in files:
            if _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(root, name))
    found.sort()
    out = []
    for p in found:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((p, f"{os.path.relpath(p, class_dir.parent)}\0{st.st_size}\0{st.st_mtime_ns}"))
    return out


FileCheck = Callable[[list[str]], tuple[list[bool], list[bool]]]


def read_directory(root: Path, check_image_files: FileCheck) -> RawData:
    """Class sub-folders, or train/ + validation/ (or val/) [+ test/] each holding class folders.

    ``check_image_files`` says which files decode and which need PIL
    (:func:`automl.data.images.check_image_files` decodes them as the pipelines will).
    """
    subdirs = _subdirs(root)
    if not subdirs:
        has_images = bool(_image_files(root))
        raise DataError(f"Folder '{root}' " + (
            "holds images but no class sub-folders" if has_images else "is empty") +
            "; expected one sub-folder per class (e.g. cats/ and dogs/) holding "
            f"{_EXT_TEXT} files, or train/ and validation/ folders that each hold class folders.")
    split_dirs = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
    layout = "train" in subdirs and (any(d in subdirs for d in ("validation", "val", "test"))
                                     or (subdirs == ["train"] and _subdirs(root / "train")))
    if not layout:
        folders = {"train": root}
    else:
        if "val" in subdirs and "validation" in subdirs:
            raise DataError(f"Folder '{root}' has both val/ and validation/; keep only one.")
        extra = [d for d in subdirs if d not in split_dirs]
        if extra:
            raise DataError(f"Folder '{root}' has train/ and split folders but also {extra}; "
                            "expected only train/, validation/ (or val/) and test/, each holding "
                            "the same class sub-folders.")
        folders = {split_dirs[d]: root / d for d in subdirs}

    class_sets = {split: _subdirs(folder) for split, folder in folders.items()}
    names = class_sets["train"]
    for split, classes in class_sets.items():
        if not classes:
            raise DataError(f"Folder '{folders[split]}' has no class sub-folders; expected one "
                            f"sub-folder per class holding {_EXT_TEXT} files.")
        if classes != names:
            only_t = sorted(set(names) - set(classes))
            only_s = sorted(set(classes) - set(names))
            raise DataError(f"The class folders of '{folders['train']}' and '{folders[split]}' "
                            f"differ: only in train: {only_t or 'none'}; only in {split}: "
                            f"{only_s or 'none'}. Every split folder must hold the same classes.")
    if len(names) < 2:
        raise DataError(f"Folder '{folders['train']}' has only one class sub-folder {names}; a "
                        "classifier needs at least two classes (one sub-folder per class).")

    listing: dict[str, list[list[tuple[str, str]]]] = {}
    for split, folder in folders.items():
        listing[split] = []
        for name in names:
            files = _image_files(folder / name)
            if not files:
                raise DataError(f"Class folder '{folder / name}' has no images; expected "
                                f"{_EXT_TEXT} files in it (hidden files are ignored).")
            listing[split].append(files)

    every = [p for per_class in listing.values() for files in per_class for p, _ in files]
    ok, use_pil = check_image_files(every)
    status = dict(zip(every, zip(ok, use_pil, strict=True), strict=True))
    skipped = [p for p, good in zip(every, ok, strict=True) if not good]
    pools = {}
    for split, per_class in listing.items():
        paths, labels, pil, ids = [], [], [], []
        for label, files in enumerate(per_class):
            good = [(p, i) for p, i in files if status[p][0]]
            if not good:
                raise DataError(f"Class folder '{folders[split] / names[label]}' has no decodable "
                                f"images: all {len(files)} of its image files failed to decode "
                                f"(e.g. '{files[0][0]}'). Expected valid {_EXT_TEXT} files.")
            for p, i in good:
                paths.append(p)
                labels.append(label)
                pil.append(status[p][1])
                ids.append(i)
        where = f"folder '{folders[split]}'"
        pools[split] = Pool(where, np.asarray(labels, np.int32), _digest(*ids), paths=paths,
                            use_pil=np.asarray(pil, bool))
    return RawData(names, pools, skipped)


# ------------------------------------------------------------------------------ image decoding

def _needs_pil(header: bytes) -> bool:
    """Palette / 1-bit BMPs: TensorFlow decodes them wrongly or not at all, PIL gets them right."""
    bits_per_pixel = int.from_bytes(header[28:30], "little")
    return header[:2] == b"BM" and len(header) >= 30 and bits_per_pixel <= 8


def pil_rgb(path: str) -> np.ndarray:
    """Decode with PIL (first frame, alpha dropped) to uint8 HxWx3; raises on bad files."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _pil_ok(path: str) -> bool:
    try:
        pil_rgb(path)
        return True
    except Exception:
        return False
