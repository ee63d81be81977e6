"""The CLIP prior with the real open_clip code and a tiny random config (no weights, no network)."""
import copy
import json
import os
import shutil
import socket
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from backend.avatar.clip_prior import load_clip
from backend.avatar.pretrained import (
    TINY_CONFIG,
    TINY_MODEL,
    ClipModelError,
    ClipSpec,
    ClipWeightsError,
    ClipWeightsMissing,
    model_name,
    register_tiny_config,
    resolve_weights,
)
from backend.errors import AvatarError

OTHER_MODEL = "test-tiny-clip-16"   # a second tiny architecture: "some other, non-test model"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails at once instead of hanging."""
    def refuse(*args, **kwargs):
        raise AssertionError("the CLIP prior tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def empty_places(monkeypatch, tmp_path):
    """Every place weights are looked for is an empty folder."""
    for var in ("AVATAR_CLIP_DIR", "HF_HUB_CACHE", "HF_HOME", "HOME", "XDG_CACHE_HOME"):
        folder = tmp_path / var.lower()
        folder.mkdir()
        monkeypatch.setenv(var, str(folder))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    if OTHER_MODEL not in open_clip.list_models():
        cfg = copy.deepcopy(TINY_CONFIG)
        cfg["embed_dim"] = 16
        path = tmp_path_factory.mktemp("cfg") / f"{OTHER_MODEL}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    return OTHER_MODEL


def _images(n=3, h=32, w=32, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained_state(tiny_clip):
    """'Trained' weights: the tiny model's, perturbed, so loading them visibly changes the model."""
    gen = torch.Generator().manual_seed(1)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
             for k, v in tiny_clip.model.state_dict().items()}
    reference = copy.deepcopy(tiny_clip)
    reference.model.load_state_dict(state)
    with torch.no_grad():
        expected = reference.encode_images(_images())
    return state, expected


def _embed(clip):
    with torch.no_grad():
        return clip.encode_images(_images())


# --------------------------------------------------------------------------- the prior

def test_tiny_model_encodes_any_size_to_unit_vectors(tiny_clip):
    assert tiny_clip.image_size == TINY_CONFIG["vision_cfg"]["image_size"]
    assert tiny_clip.describe() == f"{TINY_MODEL} (random weights)"
    D = TINY_CONFIG["embed_dim"]
    for h, w in [(32, 32), (17, 45), (100, 60), (224, 224)]:
        emb = tiny_clip.encode_images(_images(2, h, w))
        assert emb.shape == (2, D) and emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    text = tiny_clip.encode_texts(["a person in a red shirt", "a cat"])
    assert text.shape == (2, D) and not text.requires_grad
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    # different inputs give different embeddings (the model is not degenerate)
    assert (text[0] - text[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_clip.encode_images(torch.rand(3, 32, 32))


def test_gradients_reach_the_images_but_not_clip(tiny_clip):
    rendered = _images(2, 48, 48).requires_grad_(True)
    target = _images(2, 40, 40, seed=1).requires_grad_(True)
    loss = tiny_clip.image_loss(rendered, target) + tiny_clip.text_loss(rendered, ["a person"])
    loss.backward()
    assert rendered.grad is not None and torch.isfinite(rendered.grad).all()
    assert rendered.grad.abs().max() > 0
    assert target.grad is None  # the photo crop / detached render is a fixed target
    params = list(tiny_clip.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)
    tiny_clip.train()  # e.g. from a parent module: CLIP must stay in eval mode
    assert not tiny_clip.training and not tiny_clip.model.training


def test_image_loss_zero_for_the_same_image_larger_for_another(tiny_clip):
    img = _images(2)
    same = tiny_clip.image_loss(img, img.clone())
    assert abs(float(same)) < 1e-5
    other = torch.zeros_like(img)
    other[:, 0] = 1.0  # plain red
    different = tiny_clip.image_loss(img, other)
    assert float(different) > 1e-3 + float(same)
    # a single target is compared with every render
    torch.testing.assert_close(tiny_clip.image_loss(img, other[:1]), different)
    with pytest.raises(ValueError, match="targets"):
        tiny_clip.image_loss(img, _images(3))


def test_text_loss_and_prompt_cache(tiny_clip):
    prompt = "a woman in a blue dress"
    misses = tiny_clip.text_cache_misses
    first = tiny_clip.encode_texts([prompt])
    assert tiny_clip.text_cache_misses == misses + 1
    hits = tiny_clip.text_cache_hits
    again = tiny_clip.encode_texts([prompt])
    assert tiny_clip.text_cache_hits == hits + 1 and tiny_clip.text_cache_misses == misses + 1
    torch.testing.assert_close(first, again)
    loss = tiny_clip.text_loss(_images(2), [prompt])
    assert torch.isfinite(loss) and 0.0 <= float(loss) <= 2.0
    assert tiny_clip.text_cache_hits == hits + 2 and tiny_clip.text_cache_misses == misses + 1
    # the loss is 1 - cos against that very embedding
    with torch.no_grad():
        expected = (1 - (tiny_clip.encode_images(_images(2)) * first).sum(-1)).mean()
    torch.testing.assert_close(loss, expected)
    per_image = tiny_clip.text_loss(_images(2), [prompt, "a man"])
    assert torch.isfinite(per_image)
    with pytest.raises(ValueError, match="prompts"):
        tiny_clip.text_loss(_images(2), ["a", "b", "c"])


# --------------------------------------------------------------------------- loading weights

def test_weights_file_round_trip(tiny_clip, trained_state, tmp_path):
    state, expected = trained_state
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    clip = load_clip(ClipSpec(model=TINY_MODEL, pretrained=str(path)))
    torch.testing.assert_close(_embed(clip), expected)
    assert (_embed(clip) - _embed(tiny_clip)).abs().max() > 1e-3  # the file really was loaded
    assert clip.describe() == f"{TINY_MODEL} ({path.absolute()})"
    assert all(not p.requires_grad for p in clip.parameters())


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_weights_folder(trained_state, tmp_path, name):
    state, expected = trained_state
    folder = tmp_path / "weights"
    folder.mkdir()
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    else:
        torch.save(state, folder / name)
    (folder / "README.md").write_text("not weights")
    (folder / "model.safetensors").write_bytes(b"timm's format")  # hub repos hold both: open_clip's wins
    assert resolve_weights(ClipSpec(TINY_MODEL, str(folder))) == (folder / name).absolute()
    torch.testing.assert_close(_embed(load_clip(ClipSpec(TINY_MODEL, str(folder)))), expected)


def test_hub_snapshot_folder_with_symlinked_blob(trained_state, tmp_path):
    """A Hugging Face cache snapshot: the named file is a symlink to an extensionless blob."""
    state, expected = trained_state
    blob = tmp_path / "blobs" / "4f2a9c"
    blob.parent.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(blob))
    snapshot = tmp_path / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").symlink_to(blob)
    torch.testing.assert_close(_embed(load_clip(ClipSpec(TINY_MODEL, str(snapshot)))), expected)


def test_avatar_clip_dir_lookup_by_tag(trained_state, empty_places, monkeypatch):
    state, expected = trained_state
    root = empty_places / "avatar_clip_dir"
    # layout 1: <dir>/<model>/<tag>/<weights file>
    (root / TINY_MODEL / "mytag").mkdir(parents=True)
    torch.save(state, root / TINY_MODEL / "mytag" / "open_clip_pytorch_model.bin")
    clip = load_clip(ClipSpec(TINY_MODEL, "mytag"))
    torch.testing.assert_close(_embed(clip), expected)
    assert clip.describe().startswith(f"{TINY_MODEL} (mytag, {root}")
    # layout 2: <dir>/<model>-<tag>.<ext>
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / f"{TINY_MODEL}-flat.safetensors"))
    assert resolve_weights(ClipSpec(TINY_MODEL, "flat")) == root / f"{TINY_MODEL}-flat.safetensors"
    torch.testing.assert_close(_embed(load_clip(ClipSpec(TINY_MODEL, "flat"))), expected)
    # without $AVATAR_CLIP_DIR: the project cache's clip/ folder
    monkeypatch.delenv("AVATAR_CLIP_DIR")
    monkeypatch.setenv("AVATAR_CACHE_DIR", str(empty_places))
    (empty_places / "clip").mkdir()
    torch.save(state, empty_places / "clip" / f"{TINY_MODEL}-cached.pt")
    assert resolve_weights(ClipSpec(TINY_MODEL, "cached")) == empty_places / "clip" / f"{TINY_MODEL}-cached.pt"


def test_tag_found_in_hugging_face_and_openai_caches(empty_places):
    """Only resolution (the file is a stand-in, ViT-L-14 is too big to load in a unit test)."""
    repo = empty_places / "hf_hub_cache" / "models--timm--vit_large_patch14_clip_224.openai"
    new, other = repo / "snapshots" / "abc123", repo / "snapshots" / "def456"
    for snap in (new, other):  # "def456" is newer on disk, but refs/main names the current snapshot
        snap.mkdir(parents=True)
        (snap / "open_clip_pytorch_model.bin").write_bytes(b"stand-in")
    os.utime(other, (new.stat().st_mtime + 60,) * 2)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    assert resolve_weights(ClipSpec.paper()) == new / "open_clip_pytorch_model.bin"
    (new / "open_clip_model.safetensors").write_bytes(b"stand-in")  # preferred, as open_clip does
    assert resolve_weights(ClipSpec.paper()) == new / "open_clip_model.safetensors"
    assert resolve_weights(ClipSpec("ViT-L/14", "openai")) == new / "open_clip_model.safetensors"
    # OpenAI's own download location (the `clip` package, open_clip's URL downloads)
    shutil.rmtree(repo)
    openai = empty_places / "home" / ".cache" / "clip" / "ViT-L-14.pt"
    openai.parent.mkdir(parents=True)
    openai.write_bytes(b"stand-in")
    assert resolve_weights(ClipSpec.paper()) == openai


def test_openai_torchscript_release_loads_with_quick_gelu(tiny_clip, trained_state, tmp_path, monkeypatch):
    import hashlib

    from backend.avatar import pretrained

    state, expected = trained_state
    model = copy.deepcopy(tiny_clip.model)
    model.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (_images(1), open_clip.tokenize(["a"])), strict=False, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    # the real list holds OpenAI's published checksums, ViT-L-14's among them
    published = pretrained._trusted_checksums()
    assert "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836" in published
    # a TorchScript file that is not one of them is refused before anything is unpickled
    def never(*a, **k):
        raise AssertionError("an untrusted TorchScript file was opened")
    with monkeypatch.context() as m:
        m.setattr(pretrained.open_clip, "load_checkpoint", never)
        with pytest.raises(ClipWeightsError, match="not one of OpenAI's published CLIP releases"):
            load_clip(ClipSpec(TINY_MODEL, str(path), quick_gelu=False))
    # this stand-in for OpenAI's release is trusted as theirs would be: by its checksum
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(pretrained, "_trusted_checksums", lambda: published | {sha})
    exact = load_clip(ClipSpec(TINY_MODEL, str(path), quick_gelu=False))
    torch.testing.assert_close(_embed(exact), expected)
    # OpenAI's TorchScript models all use QuickGELU: by default that is switched on
    auto = load_clip(ClipSpec(TINY_MODEL, str(path)))
    assert auto.quick_gelu and "QuickGELU" in auto.describe()
    assert type(auto.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(exact.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


# --------------------------------------------------------------------------- errors

def test_missing_weights_say_where_we_looked_and_what_to_do(empty_places):
    with pytest.raises(ClipWeightsMissing) as err:
        load_clip(ClipSpec.paper())
    msg = str(err.value)
    assert isinstance(err.value, AvatarError)
    for part in ("ViT-L-14", "'openai'", "--no-clip", "timm/vit_large_patch14_clip_224.openai",
                 "open_clip_pytorch_model.bin", str(empty_places / "avatar_clip_dir" / "ViT-L-14" / "openai"),
                 str(empty_places / "hf_hub_cache" / "models--timm--vit_large_patch14_clip_224.openai"),
                 str(empty_places / "home" / ".cache" / "clip" / "ViT-L-14.pt")):
        assert part in msg, part
    assert "\n" not in msg
    # a tag open_clip does not know: the known ones are listed
    with pytest.raises(ClipWeightsMissing, match=r"ViT-B-32.*no tag .no_such_tag. for ViT-B-32 \(it knows openai.*--no-clip"):
        resolve_weights(ClipSpec("ViT-B-32", "no_such_tag"))


def test_bad_paths(tmp_path):
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(ClipWeightsMissing, match="nowhere/clip.safetensors.*does not exist.*--no-clip"):
        load_clip(ClipSpec(TINY_MODEL, str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipWeightsMissing, match=f"{empty}.*no weights file"):
        load_clip(ClipSpec(TINY_MODEL, str(empty)))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint" * 100)
    with pytest.raises(ClipWeightsError, match=f"{garbage}.*{TINY_MODEL}"):
        load_clip(ClipSpec(TINY_MODEL, str(garbage)))
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"{not json")
    with pytest.raises(ClipWeightsError, match="bad.safetensors"):
        load_clip(ClipSpec(TINY_MODEL, str(bad_safetensors)))
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"conv.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ClipWeightsError, match=f"unrelated.pt does not fit {TINY_MODEL}.*missing"):
        load_clip(ClipSpec(TINY_MODEL, str(unrelated)))
    several = tmp_path / "several"
    several.mkdir()
    (several / "a.pt").write_bytes(b"x")
    (several / "b.pt").write_bytes(b"x")
    with pytest.raises(ClipWeightsError, match="several weights files"):
        resolve_weights(ClipSpec(TINY_MODEL, str(several)))


def test_weights_of_another_model_are_refused(trained_state, other_model, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(trained_state[0], path)
    with pytest.raises(ClipWeightsError, match=f"tiny.pt into {other_model}.*size mismatch"):
        load_clip(ClipSpec(other_model, str(path)))


def test_unknown_model_names():
    with pytest.raises(ClipModelError, match=r"unknown CLIP model 'ViT-L-15'.*ViT-L-14"):
        load_clip(ClipSpec("ViT-L-15"))
    with pytest.raises(ClipModelError, match="built-in open_clip model name"):
        load_clip(ClipSpec("hf-hub:timm/vit_large_patch14_clip_224.openai"))
    assert model_name(ClipSpec("ViT-L/14")) == "ViT-L-14"


def test_random_weights_only_for_the_test_model_or_when_asked(other_model):
    with pytest.raises(ClipWeightsMissing, match="random weights.*--no-clip"):
        load_clip(ClipSpec("ViT-L-14", ""))  # refused before the 430M-parameter model is built
    with pytest.raises(ClipWeightsMissing, match="random weights"):
        load_clip(ClipSpec(other_model, ""))
    clip = load_clip(ClipSpec(other_model, "", allow_random=True))
    assert clip.encode_images(_images(1)).shape == (1, 16)
    # random weights are reproducible
    torch.testing.assert_close(_embed(clip), _embed(load_clip(ClipSpec(other_model, "", allow_random=True))))


def test_register_tiny_config_is_idempotent():
    count = len(open_clip.list_models())
    assert register_tiny_config() == TINY_MODEL == register_tiny_config()
    assert len(open_clip.list_models()) == count
    assert open_clip.get_model_config(TINY_MODEL) == TINY_CONFIG
    with pytest.raises(ValueError, match="precision"):
        load_clip(ClipSpec(TINY_MODEL, "", precision="fp8"))
