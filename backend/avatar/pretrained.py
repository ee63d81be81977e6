"""Pretrained weights the user provides: finding them on this machine and loading them.

Everything runs offline, so weights are never downloaded. CLIP (the semantic prior,
clip_prior.py): a pretrained tag such as "openai" is looked up in local places only (see
`find_tag_weights`) and open_clip is only ever given a local file; a random CLIP would be a
useless prior that still bends the fit, so random weights are refused except for the tiny test
model or when asked for explicitly. VGG16 (LPIPS's backbone, losses.py): torchvision's
ImageNet file from an explicit path, $AVATAR_VGG16_WEIGHTS or torch hub's cache. Where each
is looked for and how to get it: docs/clip.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch

from backend.errors import AvatarError

CLIP_DIR_ENV = "AVATAR_CLIP_DIR"          # our own folder of CLIP weights (layout in docs/clip.md)
TINY_MODEL = "avatar-tiny-clip"           # a ~3.4M-parameter config for tests, random weights
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    # the real CLIP vocabulary, so open_clip's bundled BPE tokenizer works unchanged
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# names open_clip and the Hugging Face hub give a model's weights, preferred first
PREFERRED_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                   "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
                   "open_clip_pytorch_model.pth", "model.pt", "model.pth")
HF_WEIGHTS = "open_clip_pytorch_model.bin"          # open_clip's default file in a hub repo
HF_SAFE_WEIGHTS = "open_clip_model.safetensors"     # ... and its safetensors twin, tried first
SIDECAR_CONFIG = "open_clip_config.json"            # hub repos' config: QuickGELU, mean/std
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# keys a TorchScript (OpenAI release) state dict carries that no open_clip model loads
HARMLESS_EXTRA_KEYS = frozenset({"attn_mask", "input_resolution", "context_length", "vocab_size"})
NO_CLIP_HINT = "or run without the semantic prior with --no-clip (see docs/clip.md)"


# --------------------------------------------------------------------------- errors

class ClipError(AvatarError):
    """The CLIP prior cannot be built as asked."""


class ClipModelError(ClipError, ValueError):
    """The model name is not an open_clip model we can run offline."""


class ClipWeightsMissing(ClipError):
    """No local weights for the spec (or random weights were asked for a real model)."""


class ClipWeightsError(ClipError):
    """A weights file exists but is not loadable weights for the model."""


# --------------------------------------------------------------------------- spec

@dataclasses.dataclass(frozen=True)
class ClipSpec:
    model: str = "ViT-L-14"        # open_clip model name; OpenAI's "ViT-L/14" spelling works too
    pretrained: str = "openai"     # a tag found locally, a weights file, a folder holding one, or "" (random)
    allow_random: bool = False     # pretrained="" for a real model: only when asked for
    quick_gelu: bool | None = None  # None: from the tag / the file's open_clip_config.json / the model
    precision: str = "auto"        # CUDA autocast: auto (bf16 where supported, else fp32), bf16, fp16, fp32

    @classmethod
    def paper(cls) -> "ClipSpec":
        """ELICIT's choice: OpenAI's ViT-L/14."""
        return cls("ViT-L-14", "openai")

    @classmethod
    def tiny_test(cls) -> "ClipSpec":
        """The tiny random model: exercises the real open_clip code in tests, meaningless as a prior."""
        return cls(TINY_MODEL, "")


def register_tiny_config() -> str:
    """Register the tiny test config with open_clip (idempotent); returns its name."""
    if TINY_MODEL not in open_clip.list_models():
        # open_clip's public hook reads configs from JSON files; the registry keeps the config
        # after the file is gone (a later rescan skips missing paths)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{TINY_MODEL}.json"
            path.write_text(json.dumps(TINY_CONFIG))
            open_clip.add_model_config(path)
    return TINY_MODEL


def model_name(spec: ClipSpec) -> str:
    """The open_clip config name for spec.model, checked: known here and runnable offline."""
    name = spec.model.strip().replace("/", "-")  # "ViT-L/14" -> "ViT-L-14", as open_clip does
    if name == TINY_MODEL:
        return register_tiny_config()
    if ":" in name:  # "hf-hub:org/repo", "local-dir:path"
        raise ClipModelError(f"CLIP model {spec.model!r}: give a built-in open_clip model name (e.g. ViT-L-14) "
                             "and the weights file or folder as the pretrained value")
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        examples = close or [m for m in ("ViT-L-14", "ViT-L-14-quickgelu", "ViT-B-16", "ViT-B-32") if m in known]
        raise ClipModelError(f"unknown CLIP model {spec.model!r}; valid names include {', '.join(examples)} "
                             f"({len(known)} in open_clip.list_models())")
    text_cfg = open_clip.get_model_config(name).get("text_cfg", {})
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg or "siglip" in name.lower():
        raise ClipModelError(f"CLIP model {name} needs a Hugging Face text model or tokenizer, which cannot be "
                             "fetched offline; use one with CLIP's own tokenizer, e.g. ViT-L-14")
    return name


# --------------------------------------------------------------------------- finding weights

def clip_dir() -> Path:
    """$AVATAR_CLIP_DIR, else <AVATAR_CACHE_DIR or ~/.cache/one-shot-avatar>/clip."""
    if os.environ.get(CLIP_DIR_ENV):
        return Path(os.environ[CLIP_DIR_ENV]).expanduser()
    cache = os.environ.get("AVATAR_CACHE_DIR") or Path.home() / ".cache" / "one-shot-avatar"
    return Path(cache).expanduser() / "clip"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub does (read now, not at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_file(model: str, tag: str) -> tuple[str, str] | None:
    """(hub repo id, file name) open_clip would download for model/tag, if it names a hub repo."""
    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)  # "org/repo/" (open_clip's convention) means the default file
    return repo, filename or HF_WEIGHTS


def _weights_in_dir(folder: Path) -> Path | None:
    """The weights file inside a folder: a preferred name, else the only weights-like file."""
    for name in PREFERRED_FILES:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) > 1:
        raise ClipWeightsError(f"the CLIP weights folder {folder} holds several weights files "
                               f"({', '.join(p.name for p in files[:5])}); give the file itself")
    return files[0] if files else None


def _hub_snapshots(repo_dir: Path) -> list[Path]:
    """A hub cache repo's snapshot folders: the one refs/main points to first, then newest first."""
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return []
    found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        main = snaps / ref.read_text().strip()
        found = [main] + [p for p in found if p != main] if main in found else found
    return found


def find_tag_weights(model: str, tag: str) -> tuple[Path | None, list[str]]:
    """Look for model/tag's weights on this machine; returns (file or None, places searched).

    Order: $AVATAR_CLIP_DIR/<model>/<tag>/ (a folder holding the file), then
    $AVATAR_CLIP_DIR/<model>-<tag>.{safetensors,bin,pt,pth}, then the Hugging Face hub cache
    open_clip downloads into, then ~/.cache/clip/ (OpenAI's `clip` package and open_clip's URL
    downloads). open_clip's spelling of the tag (lower case, '_' for '-') is tried too.
    """
    searched: list[str] = []
    root = clip_dir()
    tags = list(dict.fromkeys([tag, tag.lower().replace("-", "_")]))
    for t in tags:
        folder = root / model / t
        searched.append(f"{folder}/")
        if folder.is_dir() and (found := _weights_in_dir(folder)):
            return found, searched
    for t in tags:
        searched.append(f"{root / f'{model}-{t}'}.{{{','.join(s[1:] for s in WEIGHT_SUFFIXES)}}}")
        for suffix in WEIGHT_SUFFIXES:
            if (path := root / f"{model}-{t}{suffix}").is_file():
                return path, searched
    hub = hub_file(model, tag)
    if hub:
        repo, filename = hub
        names = [filename]
        if filename == HF_WEIGHTS:
            names.insert(0, HF_SAFE_WEIGHTS)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        repo_dir = hf_hub_cache() / f"models--{repo.replace('/', '--')}"
        searched.append(f"{repo_dir}/snapshots/*/{{{','.join(names)}}}")
        for snap in _hub_snapshots(repo_dir):
            for name in names:
                if (snap / name).is_file():  # follows the symlink: a dangling one is a partial download
                    return snap / name, searched
    url = open_clip.get_pretrained_cfg(model, tag).get("url", "")
    if url:
        path = Path.home() / ".cache" / "clip" / os.path.basename(url)
        searched.append(str(path))
        if path.is_file():
            return path, searched
    return None, searched


def _is_path(value: str, model: str) -> bool:
    """Whether `pretrained` names a file or folder rather than a tag."""
    if os.sep in value or "/" in value or value.startswith(("~", ".")) or value.endswith(WEIGHT_SUFFIXES):
        return True
    if open_clip.is_pretrained_cfg(model, value):
        return False
    return os.path.exists(value)


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    path: Path | None      # None: random weights
    tag: str | None        # the tag it was found for (None: the user gave a path)
    tag_cfg: dict          # open_clip's pretrained config for the tag ({} when unknown)


def _missing_message(model: str, tag: str, searched: list[str]) -> str:
    hub = hub_file(model, tag)
    target = clip_dir() / model / tag
    if hub:
        repo, filename = hub
        get = (f"to get them, on a machine with internet download {filename} from the Hugging Face repo {repo} "
               f"(https://huggingface.co/{repo}), or run python -c \"import open_clip; "
               f"open_clip.create_model('{model}', pretrained='{tag}')\" and copy "
               f"~/.cache/huggingface/hub/models--{repo.replace('/', '--')}, then put the file in {target}/ "
               "or pass it with --clip-pretrained PATH")
    elif open_clip.get_pretrained_cfg(model, tag).get("url"):
        url = open_clip.get_pretrained_cfg(model, tag)["url"]
        get = (f"to get them, on a machine with internet download {url}, then put it in {target}/ "
               "or pass it with --clip-pretrained PATH")
    else:
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = (f"open_clip has no tag {tag!r} for {model} (it knows {', '.join(tags[:8])}"
                 f"{' ...' if len(tags) > 8 else ''})" if tags else f"open_clip has no pretrained weights for {model}")
        get = f"{known}; put your own weights file in {target}/ or pass it with --clip-pretrained PATH"
    return (f"CLIP weights for {model} (pretrained {tag!r}) not found on this machine (searched "
            f"{'; '.join(searched)}); {get}; {NO_CLIP_HINT}")


def resolve_source(spec: ClipSpec) -> WeightsSource:
    """Where spec's weights come from, without loading them; raises ClipWeightsMissing."""
    name = model_name(spec)
    value = str(spec.pretrained).strip()
    if not value:
        if name != TINY_MODEL and not spec.allow_random:
            raise ClipWeightsMissing(f"CLIP model {name} with pretrained='' would have random weights, which are "
                                     "no semantic prior; give a pretrained tag (e.g. openai) or a weights file, "
                                     f"{NO_CLIP_HINT}")
        return WeightsSource(None, None, {})
    if _is_path(value, name):
        path = Path(value).expanduser()
        if path.is_dir():
            found = _weights_in_dir(path)
            if found is None:
                raise ClipWeightsMissing(f"the CLIP weights folder {path} holds no weights file (looked for "
                                         f"{', '.join(PREFERRED_FILES[:3])} or one *.safetensors/*.bin/*.pt/*.pth); "
                                         f"{NO_CLIP_HINT}")
            path = found
        elif not path.is_file():
            raise ClipWeightsMissing(f"the CLIP weights file {path} does not exist; check the path, {NO_CLIP_HINT}")
        # absolute, not resolved: a hub snapshot's file is a symlink to an extensionless blob, and
        # the name (.safetensors or not) and folder (open_clip_config.json) are what we go by
        return WeightsSource(path.absolute(), None, {})
    found, searched = find_tag_weights(name, value)
    if found is None:
        raise ClipWeightsMissing(_missing_message(name, value, searched))
    return WeightsSource(found, value, dict(open_clip.get_pretrained_cfg(name, value)))


def resolve_weights(spec: ClipSpec) -> Path | None:
    """The local weights file spec names (None: random weights); raises ClipWeightsMissing, never downloads."""
    return resolve_source(spec).path


# --------------------------------------------------------------------------- loading

def _is_torchscript(path: Path) -> bool:
    """OpenAI's own release (~/.cache/clip/ViT-L-14.pt) is a TorchScript archive."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def _sidecar(path: Path) -> dict:
    """The open_clip_config.json next to a weights file (hub repos ship one), or {}."""
    cfg_file = path.parent / SIDECAR_CONFIG
    if not cfg_file.is_file():
        return {}
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise ClipWeightsError(f"cannot read {cfg_file} (next to the CLIP weights): {exc}; fix or remove it") from exc
    return cfg if isinstance(cfg, dict) else {}


def _quick_gelu(spec: ClipSpec, source: WeightsSource) -> bool | None:
    """QuickGELU or GELU: OpenAI trained with QuickGELU, and open_clip's plain ViT-L-14 config uses
    GELU, so OpenAI weights need it switched on (None: the model config's own choice)."""
    if spec.quick_gelu is not None:
        return spec.quick_gelu
    if source.tag_cfg.get("quick_gelu"):
        return True
    if source.path is not None:
        model_cfg = _sidecar(source.path).get("model_cfg", {})
        if "quick_gelu" in model_cfg:
            return bool(model_cfg["quick_gelu"])
        if _is_torchscript(source.path):
            return True  # only OpenAI publishes TorchScript CLIPs, all QuickGELU
    return None


def _preprocess_cfg(source: WeightsSource) -> dict:
    """Mean/std/resizing the weights were trained with: the tag's, else the sidecar's, else open_clip's defaults."""
    keys = ("mean", "std", "interpolation", "resize_mode", "fill_color")
    cfg = source.tag_cfg or (_sidecar(source.path).get("preprocess_cfg", {}) if source.path else {})
    return {k: cfg[k] for k in keys if k in cfg}


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs through the root logger ("No pretrained weights loaded" on every build, since we
    load weights ourselves); drop its sub-error records, and stop logging.warning() from calling
    basicConfig and leaving a stderr handler on the application's root logger."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}open_clip{os.sep}" not in record.pathname
    root.addHandler(guard)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        root.removeHandler(guard)


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    line = " ".join(text[:3]) if text else ""
    line = line if len(line) <= limit else line[:limit] + " ..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _trusted_checksums() -> set[str]:
    """SHA-256 of OpenAI's published TorchScript CLIP releases: their download URLs, which
    open_clip's registry holds, name each file by its checksum (.../clip/models/<sha256>/X.pt)."""
    sums = set()
    for model_name, tag in open_clip.list_pretrained():
        url = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("url", "")
        if "openaipublic" in url and url.count("/") >= 2:
            sums.add(url.split("/")[-2].lower())
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    """open_clip's own loader (format conversions, position-embedding resizing), made strict here."""
    expect = f"expected open_clip weights for {name} (or OpenAI's TorchScript release)"
    jit = _is_torchscript(path)
    if jit and _sha256(path) not in _trusted_checksums():
        # loading TorchScript unpickles (and may run) whatever the file holds: only OpenAI's own
        raise ClipWeightsError(f"{path} is a TorchScript archive but not one of OpenAI's published CLIP "
                               "releases (its SHA-256 is not theirs), and loading TorchScript can run code "
                               "from the file; use the safetensors weights from the Hugging Face hub instead "
                               "(docs/clip.md)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation, torch.load dispatch notices
            # full unpickling only for a TorchScript archive, which torch.load hands to torch.jit.load
            result = open_clip.load_checkpoint(model, str(path), strict=False, weights_only=not jit)
    except pickle.UnpicklingError as exc:  # torch's text suggests weights_only=False: not for a stranger's file
        raise ClipWeightsError(f"cannot load the CLIP weights file {path} into {name}: not a PyTorch weights file "
                               "(or one holding arbitrary Python objects, which we do not unpickle); "
                               f"{expect}") from exc
    except Exception as exc:  # noqa: BLE001 - garbage, truncated or mismatched files are one user problem
        raise ClipWeightsError(f"cannot load the CLIP weights file {path} into {name}: {_first_line(exc)}; "
                               f"{expect}") from exc
    missing = list(getattr(result, "missing_keys", []))
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if k not in HARMLESS_EXTRA_KEYS]
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})"
                 if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''})"
                 if unexpected else ""]
        raise ClipWeightsError(f"the CLIP weights file {path} does not fit {name}: tensors "
                               f"{'; '.join(p for p in parts if p)}; {expect}")


def build_clip(spec: ClipSpec):
    """open_clip's model and tokenizer for spec with its local weights loaded (see
    resolve_source; never downloads): (model, tokenizer, name, source, uses QuickGELU)."""
    if spec.precision not in PRECISIONS:
        raise ValueError(f"CLIP precision {spec.precision!r} is not one of {', '.join(PRECISIONS)}")
    name = model_name(spec)
    source = resolve_source(spec)
    quick_gelu = _quick_gelu(spec, source)
    kwargs = {} if quick_gelu is None else {"quick_gelu": quick_gelu}
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (tests) are the same on every load
        model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu",
                                       pretrained_image=False, pretrained_text=False,
                                       force_preprocess_cfg=_preprocess_cfg(source), **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    if source.path is not None:
        _load_weights(model, source.path, name)
    uses_quick_gelu = bool(quick_gelu if quick_gelu is not None else open_clip.get_model_config(name).get("quick_gelu"))
    return model, tokenizer, name, source, uses_quick_gelu


# --------------------------------------------------------------------------- VGG16 (LPIPS)

VGG16_FILE = "vgg16-397923af.pth"      # torchvision's VGG16 ImageNet weights (IMAGENET1K_V1)
VGG16_ENV = "AVATAR_VGG16_WEIGHTS"     # an explicit path to that file
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


@dataclasses.dataclass(frozen=True)
class LpipsUnavailable:
    """Why LPIPS could not be built (falsy, so `if not load_lpips(): ...` reads naturally)."""
    reason: str
    searched: tuple[str, ...]

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.reason


def vgg16_candidates(weights_path: str | os.PathLike | None = None) -> list[Path]:
    """Where the VGG16 weights are looked for, in order: the explicit path, $AVATAR_VGG16_WEIGHTS,
    torch hub's checkpoint cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/...)."""
    if weights_path is not None:
        return [Path(weights_path).expanduser()]
    found = []
    if os.environ.get(VGG16_ENV):
        found.append(Path(os.environ[VGG16_ENV]).expanduser())
    found.append(Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE)
    return found

def find_vgg16(weights_path: str | os.PathLike | None = None) -> Path | LpipsUnavailable:
    """The local VGG16 file LPIPS's backbone loads from (see vgg16_candidates), or why there is
    none. A file the user named explicitly must exist (AvatarError): silently fitting without
    it would surprise."""
    candidates = vgg16_candidates(weights_path)
    if weights_path is not None and not candidates[0].is_file():
        raise AvatarError(f"the VGG16 weights file {candidates[0]} given for LPIPS does not exist "
                          f"(it is torchvision's {VGG16_FILE}, {VGG16_URL})")
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        where = ", ".join(str(p) for p in candidates)
        return LpipsUnavailable(
            f"LPIPS-VGG unavailable: no VGG16 weights at {where}; download {VGG16_URL} and put it "
            f"there or point ${VGG16_ENV} at it (falling back to 1 - SSIM)",
            tuple(str(p) for p in candidates))
    return path


def read_vgg16_features(path: Path) -> dict[str, torch.Tensor]:
    """The `features.N.weight/bias` tensors of a torchvision VGG16 state dict (classifier
    keys, if present, are ignored)."""
    try:
        # the 528 MB file is mostly classifier: map it lazily when the format allows
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise AvatarError(f"cannot read the VGG16 weights file {path}: {type(exc).__name__}: {exc}; "
                          f"replace it with torchvision's {VGG16_FILE} ({VGG16_URL})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AvatarError(f"the VGG16 weights file {path} holds a {type(state).__name__}, not a state dict; "
                          f"expected torchvision's {VGG16_FILE} ({VGG16_URL})")
    return {k[len("features."):]: v for k, v in state.items()
            if isinstance(k, str) and k.startswith("features.") and isinstance(v, torch.Tensor)}


def load_vgg16_backbone(net: torch.nn.Module, features: dict[str, torch.Tensor], path: Path) -> None:
    """Copy torchvision's `features.N.*` into lpips' backbone, which keeps torchvision's layer
    index N as the module name inside its slices (slice1.0, slice1.2, slice2.5, ...)."""
    missing, bad_shape = [], []
    with torch.no_grad():
        for name, param in net.named_parameters():
            _, index_and_kind = name.split(".", 1)  # "slice2.5.weight" -> "5.weight"
            src = features.get(index_and_kind)
            if src is None:
                missing.append(f"features.{index_and_kind}")
            elif src.shape != param.shape:
                bad_shape.append(f"features.{index_and_kind} {tuple(src.shape)} != {tuple(param.shape)}")
            else:
                param.copy_(src.to(param.dtype))
    if missing or bad_shape:
        problems = "; ".join(filter(None, [
            f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else "",
            f"wrong shapes {', '.join(bad_shape[:4])}" if bad_shape else ""]))
        raise AvatarError(f"the VGG16 weights file {path} is not torchvision's VGG16 ({problems}); "
                          f"expected {VGG16_FILE} ({VGG16_URL})")
