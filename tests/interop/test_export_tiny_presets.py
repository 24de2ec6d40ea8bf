"""The CPU-sized presets export to every format: s3prl's experts and fairseq's layout (s3prl's
fairseq-free copy of fairseq's models) read `speechssl export` of a trained-looking (perturbed)
`hubert_tiny` / `wav2vec2_tiny` with our hidden states."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("s3prl")
from s3prl.upstream.hubert.hubert_model import (  # noqa: E402
    HubertConfig,
    HubertModel,
    HubertPretrainingConfig,
)
from s3prl.upstream.wav2vec2.wav2vec2_model import Wav2Vec2Config, Wav2Vec2Model  # noqa: E402

import speechssl  # noqa: E402
from speechssl.cli.main import main  # noqa: E402
from speechssl.interop.safe_pickle import load_checkpoint  # noqa: E402
from speechssl.models import build_model, get_preset, save_checkpoint  # noqa: E402
from speechssl.testing.models import perturb_  # noqa: E402
from tests.interop.test_fairseq import reference_hidden_states  # noqa: E402
from tests.interop.test_s3prl import expert_for, upstream_error  # noqa: E402

TOL = 1e-4
PRESETS = ["hubert_tiny", "wav2vec2_tiny"]
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")
# What fairseq's pretraining models hold beyond the backbone; a backbone-only export leaves them out.
HEADS = ("final_proj.", "label_embs_concat", "quantizer.", "project_q.", "target_glu.", "mask_emb")


def _waves() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(n, generator=gen) for n in (3700, 5123)]  # odd lengths


def _checkpoint(tmp_path, preset: str):
    config = get_preset(preset)
    # dropout and LayerDrop off: the references run in eval mode too, this only keeps the test strict
    model = build_model(config)
    perturb_(model, scale=0.1, seed=11)  # every parameter away from its init: a missed mapping shows
    save_checkpoint(model, config, tmp_path / preset)
    return tmp_path / preset, config


def test_tiny_presets_have_the_feature_projection_fairseq_builds():
    for name in PRESETS:
        config = get_preset(name)
        assert config.frontend.output_dim != config.encoder.embed_dim, name


@pytest.mark.parametrize("preset", PRESETS)
def test_s3prl_export_of_a_tiny_preset_is_read_by_s3prls_expert(tmp_path, preset):
    ckpt, config = _checkpoint(tmp_path, preset)
    out = tmp_path / "s3prl.pt"
    assert main(["export", "--upstream", str(ckpt), "--format", "s3prl", "--out", str(out)]) == 0
    up = speechssl.load_upstream(ckpt)
    err = upstream_error(up, expert_for(config.family, str(out)), _waves())
    print(f"{preset}: s3prl expert vs ours, max abs error {err:.2e}")
    assert err < TOL


def _fairseq_reference(ckpt: dict, family: str) -> torch.nn.Module:
    """fairseq's model (s3prl's copy) built from the exported cfg, the exported weights loaded."""
    model_cfg = {k: v for k, v in ckpt["cfg"]["model"].items() if not k.startswith("_")}
    if family == "hubert":
        known = set(HubertConfig.__dataclass_fields__)
        cfg = HubertConfig(**{k: v for k, v in model_cfg.items() if k in known})
        model = HubertModel(cfg, HubertPretrainingConfig(), [None])
    else:
        known = set(Wav2Vec2Config.__dataclass_fields__)
        model = Wav2Vec2Model(Wav2Vec2Config(**{k: v for k, v in model_cfg.items() if k in known}))
    result = model.load_state_dict(ckpt["model"], strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(HEADS) for k in result.missing_keys), result.missing_keys
    return model.eval()


@pytest.mark.parametrize("preset", PRESETS)
def test_fairseq_export_of_a_tiny_preset_has_fairseqs_layout(tmp_path, preset):
    ckpt, config = _checkpoint(tmp_path, preset)
    out = tmp_path / "fairseq.pt"
    assert main(["export", "--upstream", str(ckpt), "--format", "fairseq", "--out", str(out)]) == 0
    exported = load_checkpoint(out)
    assert exported["model"]["post_extract_proj.weight"].shape == (64, 48)
    reference = _fairseq_reference(exported, config.family)
    up = speechssl.load_upstream(ckpt)
    worst = 0.0
    for wav in _waves():  # group-norm frontend: one utterance at a time, as fairseq computes it
        inputs, final, _ = reference_hidden_states(reference, wav)
        with torch.no_grad():
            ours = up(wav[None], torch.tensor([len(wav)])).hidden_states
        assert len(ours) == len(inputs) + 1
        for r, o in zip([*inputs, final], ours):
            worst = max(worst, (r - o).abs().max().item())
    print(f"{preset}: fairseq layout vs ours, max abs error {worst:.2e}")
    assert worst < TOL
    # and the export reloads as the same model
    again = speechssl.load_upstream(out)
    for k, v in up.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v, atol=0, rtol=0)


def test_equal_widths_with_a_trained_projection_are_refused_naming_the_formats_that_work(tmp_path, capsys):
    tiny = get_preset("hubert_tiny")
    config = replace(tiny, frontend=replace(tiny.frontend, conv_dim=[32] * 6 + [64]))  # 64 == embed_dim
    model = build_model(config)
    perturb_(model, seed=2)
    save_checkpoint(model, config, tmp_path / "equal")
    for fmt in ("fairseq", "s3prl"):
        out = tmp_path / f"{fmt}.pt"
        assert (
            main(["export", "--upstream", str(tmp_path / "equal"), "--format", fmt, "--out", str(out)]) == 1
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not out.exists()
        assert f"format '{fmt}' cannot carry this model" in err
        assert "conv width (frontend.conv_dim[-1] = 64) equals encoder.embed_dim" in err
        assert "formats that can: hf, onnx, torchscript" in err
