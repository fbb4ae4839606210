"""scanssc-import and --init on a stand-in for the released ScanSSC checkpoint built from the official manifest."""
from __future__ import annotations

import pickle

import pytest
import torch
from official_fake import official_state, read_manifest, write_lightning_checkpoint

from scanssc_ros import checkpoint
from scanssc_ros.cli.import_official import main as import_main
from scanssc_ros.config import variant
from scanssc_ros.model.scanssc import ScanSSC
from scanssc_ros.official_weights import FROZEN_GEOMETRY, convert_official, official_key_to_ours

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official(official_manifest_root, tmp_path_factory):
    """(source state dict, path of the Lightning checkpoint, path a hostile pickle would have created)."""
    tmp = tmp_path_factory.mktemp("official")
    state = official_state(official_manifest_root)
    marker = tmp / "code_ran"
    path = tmp / "ScanSSC_SemanticKitti.ckpt"
    write_lightning_checkpoint(path, state, marker)
    return state, path, marker


@pytest.fixture(scope="module")
def paper_model():
    return ScanSSC(variant("paper"))


def test_paper_variant_has_exactly_the_official_shapes(official_manifest_root, paper_model):
    own = paper_model.state_dict()
    frozen = {f"model.{k}" for k in FROZEN_GEOMETRY}
    manifest = {k: (s, d) for k, s, d in read_manifest(official_manifest_root) if k not in frozen}
    mapped = {official_key_to_ours(k): v for k, v in manifest.items()}
    assert len(mapped) == len(manifest) == len(own) == 1881
    assert set(mapped) == set(own)
    wrong = [(k, mapped[k], (tuple(own[k].shape), own[k].dtype)) for k in own
             if (tuple(own[k].shape), own[k].dtype) != mapped[k]]
    assert not wrong, wrong[:5]
    # the squeeze-excitation widths the issue found wrong: in_channels / 4 without rounding
    assert tuple(own["img_backbone.layers.2.1.se.conv1.weight"].shape) == (12, 288, 1, 1)
    assert tuple(own["img_backbone.layers.3.1.se.conv1.weight"].shape) == (20, 480, 1, 1)
    assert tuple(own["VoxFormer_head.cross_transformer.level_embeds"].shape) == (4, 128)


def test_import_is_strict_bit_exact_and_runs_no_pickled_code(official, tmp_path, capsys):
    state, src, marker = official
    out = tmp_path / "paper_official.pt"
    assert import_main([str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "matched 1881 tensors (234 renamed), dropped 8 frozen geometry tensors" in printed
    assert "mmcv.utils.config.ConfigDict" in printed and "posix.system" in printed
    assert not marker.exists(), "a pickled os.system call ran during import"

    model, cfg, extra = checkpoint.load(out)  # the path alone rebuilds it, strictly
    assert cfg.variant == "paper" and cfg.input_convention == "official" and extra["label_set"] == "semantickitti"
    own = model.state_dict()
    for key in ("model.img_backbone.layers.0.conv.weight", "model.img_backbone.layers.3.1.se.conv1.conv.weight",
                "model.depth_net.depth_aggregation.mono_stereo_attention.neighbor_atttention.rpb",
                "model.VoxFormer_head.volume_embed.weight", "model.VoxFormer_head.cross_transformer.level_embeds",
                "model.occ_encoder_backbone.combine_coeff.0.weight", "model.pts_bbox_head.occ_convs.0.3.weight",
                "model.img_neck.deblocks.0.1.num_batches_tracked"):
        if key not in state:  # keep the list honest if the manifest names a module differently
            pytest.fail(f"{key} not in the manifest")
        ours = own[official_key_to_ours(key)]
        assert ours.dtype == state[key].dtype and torch.equal(ours, state[key]), key


def test_geometry_of_another_config_is_refused(official, paper_model):
    state, _, _ = official
    bad = dict(state)
    bad["model.img_view_transformer.frustum"] = state["model.img_view_transformer.frustum"][:, :, :80]
    with pytest.raises(ValueError, match="frozen geometry .*frustum.* another image size or grid"):
        convert_official(bad, paper_model, variant("paper"))


def test_unexpected_and_missing_keys_are_named(official, paper_model):
    state, _, _ = official
    bad = dict(state)
    bad["model.tpv_branch.attn.weight"] = torch.zeros(3)  # CGFormer's TPV branch: another model
    del bad["model.pts_bbox_head.occ_convs.0.1.bias"]
    with pytest.raises(ValueError) as err:
        convert_official(bad, paper_model, variant("paper"))
    text = str(err.value)
    assert "1 unexpected keys (e.g. model.tpv_branch.attn.weight)" in text
    assert "1 missing keys (e.g. pts_bbox_head.occ_convs.0.1.bias)" in text and "\n" not in text


@pytest.mark.parametrize("kind", ["text", "other_model", "truncated", "missing"])
def test_import_errors_are_one_line(kind, official, tmp_path, capsys):
    src = tmp_path / "input.ckpt"
    if kind == "text":
        src.write_text("this is not a checkpoint\n")
    elif kind == "other_model":
        torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, src)
    elif kind == "truncated":
        data = official[1].read_bytes()
        src.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out.pt"
    assert import_main([str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scanssc-import: error: ") and "\n" not in err, err
    expect = {"text": "not a readable torch checkpoint", "other_model": "not an official ScanSSC checkpoint",
              "truncated": "not a readable torch checkpoint", "missing": "file not found"}[kind]
    assert expect in err
    assert not out.exists()


def test_import_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        import_main(["--help"])
    assert exit_.value.code == 0
    assert "ScanSSC_SemanticKitti.ckpt" in capsys.readouterr().out


def test_init_from_official_files_loads_what_matches(official, tmp_path):
    """--init with the release's initialisation files: pretrain_geodepth.pth (mmcv {'state_dict'}, no prefix)
    and the mmcls ImageNet EfficientNet-B7 (backbone.* + head.*)."""
    from scanssc_ros.training.state import load_initial_weights

    state, _, _ = official
    model = ScanSSC(variant("paper"))
    geodepth = {k.removeprefix("model."): v for k, v in state.items()
                if k.startswith(("model.img_backbone.", "model.img_neck.", "model.depth_net."))}
    geodepth["plugin_head.conv_seg.weight"] = torch.zeros(20, 128, 1, 1)  # the pre-training segmentation head
    torch.save({"state_dict": geodepth}, tmp_path / "pretrain_geodepth.pth")
    lines = load_initial_weights(str(tmp_path / "pretrain_geodepth.pth"), model)
    text = "\n".join(lines)
    assert f"loaded {len(geodepth) - 1} tensors" in text
    assert "VoxFormer_head.volume_embed (1)" in text and "plugin_head.conv_seg (1)" in text
    key = "model.depth_net.depth_net.context_conv.weight"
    assert key in state and torch.equal(model.state_dict()[official_key_to_ours(key)], state[key])

    mmcls = {k.replace("model.img_backbone.", "backbone."): v for k, v in state.items()
             if k.startswith("model.img_backbone.")}
    mmcls["head.fc.weight"], mmcls["head.fc.bias"] = torch.zeros(1000, 2560), torch.zeros(1000)
    torch.save({"meta": {"epoch": 1}, "state_dict": mmcls}, tmp_path / "efficientnet-b7.pth")
    fresh = ScanSSC(variant("paper"))
    lines = load_initial_weights(str(tmp_path / "efficientnet-b7.pth"), fresh)
    assert f"loaded {len(mmcls) - 2} tensors" in lines[0]
    key = "model.img_backbone.layers.4.2.se.conv1.conv.weight"
    assert torch.equal(fresh.state_dict()[official_key_to_ours(key)], state[key])


def test_restricted_loader_never_calls_unknown_globals(tmp_path):
    from scanssc_ros.safe_load import load_untrusted

    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": Hostile()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    obj, placeholders = load_untrusted(path)
    assert placeholders == ["posix.system"] and not marker.exists()
    assert torch.equal(obj["state_dict"]["w"], torch.ones(2))


@pytest.mark.heavy
def test_imported_paper_model_runs_a_full_size_forward(official, tmp_path):
    from scanssc_ros.model.examples import example_inputs

    _, src, _ = official
    out = tmp_path / "paper_official.pt"
    assert import_main([str(src), str(out)]) == 0
    model, cfg, _ = checkpoint.load(out)
    with torch.inference_mode():
        logits = model(example_inputs(cfg, batch_size=1)).logits
    assert logits.shape == (1, 20, 256, 256, 32) and torch.isfinite(logits).all()
