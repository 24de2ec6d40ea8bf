"""s3prl converted checkpoints: import through load_upstream, export read back by s3prl's own expert."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("s3prl")
from s3prl.upstream.hubert.expert import UpstreamExpert as HubertExpert  # noqa: E402
from s3prl.upstream.wav2vec2.expert import UpstreamExpert as Wav2Vec2Expert  # noqa: E402

import speechssl  # noqa: E402
from speechssl.interop.s3prl_io import load_s3prl, to_s3prl  # noqa: E402
from speechssl.models.model import build_model  # noqa: E402
from tests.interop.test_fairseq import VARIANTS, build_reference, perturb, waves  # noqa: E402

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")


def save_converted(path, ref, model_cfg: dict, *, normalize: bool) -> str:
    """What s3prl's convert.py writes: plain cfg dicts, fairseq-named weights, label symbols."""
    ckpt = {
        "task_cfg": {
            "_name": f"{model_cfg['_name']}_pretraining",
            "normalize": normalize,
            "sample_rate": 16000,
        },
        "model_cfg": model_cfg,
        "model_weight": ref.state_dict(),
    }
    if model_cfg["_name"] == "hubert":
        ckpt["task_cfg"]["label_rate"] = 50.0
        ckpt["dictionaries_symbols"] = [list("abcd"), list("xyz")]
    torch.save(ckpt, path)
    return str(path)


def expert_for(family: str, path: str):
    return (HubertExpert if family == "hubert" else Wav2Vec2Expert)(path).eval()


def final_layer_output(expert, wav: torch.Tensor) -> torch.Tensor:
    """The last layer's output before the final LayerNorm (fairseq layer_results[-1]);
    wav already normalized."""
    captured = []
    hook = expert.model.encoder.layers[-1].register_forward_hook(lambda m, a, o: captured.append(o[0]))
    try:
        with torch.no_grad():
            res = expert.model.extract_features(wav[None], padding_mask=None, mask=False)
    finally:
        hook.remove()
    x = res[0] if isinstance(res, tuple) else res["x"]  # hubert returns a tuple, wav2vec2 a dict
    return captured[0].transpose(0, 1)[:, : x.shape[1]]  # (T, B, D) -> (B, T, D), minus seq-multiple padding


def upstream_error(up, expert, wavs: list[torch.Tensor]) -> float:
    """Max abs error, our Upstream (padded batch when the frontend allows) vs s3prl's expert per utterance."""
    L = up.num_layers
    groups = [wavs] if up.config.frontend.mode == "layer_norm" else [[w] for w in wavs]
    worst = 0.0
    for group in groups:
        batch = torch.nn.utils.rnn.pad_sequence(group, batch_first=True)
        with torch.no_grad():
            out = up(batch, torch.tensor([len(w) for w in group]))
        assert len(out.hidden_states) == L + 1
        for b, wav in enumerate(group):
            with torch.no_grad():
                ref = expert([wav])["hidden_states"]  # layer inputs, then the encoder output
            T = int(out.lengths[b])
            assert T == ref[0].shape[1]
            refs = list(ref[:L])
            if up.config.encoder.layer_norm_first:
                # ours: last layer's output before the final LN (as transformers); s3prl's expert: after it
                refs.append(final_layer_output(expert, _normalized(up, wav)))
            else:
                refs.append(ref[L])
            for r, o in zip(refs, out.hidden_states):
                worst = max(worst, (r[0] - o[b, :T]).abs().max().item())
    return worst


def _normalized(up, wav: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(wav, wav.shape) if up.config.normalize_waveform else wav


@pytest.mark.parametrize("name, normalize", [(n, n != "hubert_group_postln") for n in VARIANTS])
def test_load_upstream_matches_s3prl_expert(tmp_path, name, normalize):
    ref, model_cfg = build_reference(name)
    path = save_converted(tmp_path / "converted.pt", ref, model_cfg, normalize=normalize)
    up = speechssl.load_upstream(path)
    assert up.config.normalize_waveform == normalize
    err = upstream_error(up, expert_for(model_cfg["_name"], path), waves())
    print(f"{name} (normalize={normalize}): max abs error {err:.2e}")
    assert err < TOL


def test_export_is_read_by_s3prl(tmp_path):
    """An encoder-only model of ours -> to_s3prl -> s3prl's expert gives our hidden states."""
    for name in VARIANTS:
        ref, model_cfg = build_reference(name)
        config, _, _ = load_s3prl(save_converted(tmp_path / "in.pt", ref, model_cfg, normalize=False))
        ours = build_model(config).eval()
        perturb(ours, seed=3)
        if config.frontend.output_dim == config.encoder.embed_dim:  # fairseq has no projection there
            with torch.no_grad():
                ours.feature_projection.projection.weight.copy_(torch.eye(config.encoder.embed_dim))
                ours.feature_projection.projection.bias.zero_()
        torch.save(to_s3prl(config, ours.state_dict()), tmp_path / "out.pt")
        up = speechssl.load_upstream(tmp_path / "out.pt")
        up.model.load_state_dict(ours.state_dict())
        assert upstream_error(up, expert_for(config.family, str(tmp_path / "out.pt")), waves()[:2]) < TOL


def test_round_trip_s3prl_ours_s3prl_is_exact(tmp_path):
    for name in VARIANTS:
        ref, model_cfg = build_reference(name)
        path = save_converted(tmp_path / "in.pt", ref, model_cfg, normalize=True)
        config, state_dict, extras = load_s3prl(path)
        out = to_s3prl(config, state_dict, extras=extras)
        ref_sd = ref.state_dict()
        assert set(out["model_weight"]) == set(ref_sd)
        assert all(torch.equal(out["model_weight"][k], v) for k, v in ref_sd.items())
        assert out["task_cfg"]["normalize"] is True
        torch.save(out, tmp_path / "again.pt")
        config2, state_dict2, _ = load_s3prl(tmp_path / "again.pt")
        assert config2 == config and all(torch.equal(state_dict2[k], v) for k, v in state_dict.items())


def test_not_a_converted_checkpoint_is_named(tmp_path):
    torch.save({"model_cfg": {}, "model_weight": {}}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match=r"half\.pt: not an s3prl converted checkpoint: missing task_cfg"):
        load_s3prl(tmp_path / "half.pt")
