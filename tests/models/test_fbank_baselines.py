"""The FBANK baselines equal s3prl's own extractor (s3prl/upstream/baseline: fbank.yaml and
fbank_no_cmvn.yaml through its get_extracter), batched with padding, to 1e-4."""

from __future__ import annotations

import pytest
import torch
import yaml

from speechssl.errors import SpeechSSLError
from speechssl.interop.upstream import BUILTIN_UPSTREAMS, load_upstream, upstream_name
from speechssl.testing.models import random_waves

extracter = pytest.importorskip("s3prl.upstream.baseline.extracter")

LENGTHS = [16000, 9377, 4001]  # odd lengths: partial last frames, padding in the batch


def s3prl_features(config_name: str, wavs: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    import importlib.resources

    path = importlib.resources.files("s3prl.upstream.baseline") / f"{config_name}.yaml"
    config = yaml.safe_load(path.read_text())
    extract, _, _ = extracter.get_extracter(config)
    return [extract(w[:n]) for w, n in zip(wavs, lengths.tolist(), strict=True)]


@pytest.mark.parametrize("name", ["fbank", "fbank_no_cmvn"])
def test_features_equal_s3prl(name):
    wavs, lengths = random_waves(LENGTHS, seed=3)
    ours = load_upstream(name)
    with torch.no_grad():
        out = ours(wavs, lengths)
    (x,) = out.hidden_states
    refs = s3prl_features(name, wavs, lengths)
    assert x.shape[-1] == ours.hidden_dim == 240
    for i, ref in enumerate(refs):
        n = int(out.lengths[i])
        assert n == ref.shape[0]
        err = (x[i, :n] - ref).abs().max().item()
        assert err < 1e-4, (name, i, err)
        assert not x[i, n:].any()  # padded frames are 0
    if name == "fbank_no_cmvn":  # the waveform as loaded, not scaled by 32768: log-mels near 0, not ~21
        assert x[0, :, :80].mean().abs() < 15


def test_cmvn_row_does_not_depend_on_the_waveform_scale():
    """Per-utterance CMVN removes the log offset a scale adds: the old 32768 scaling gives the same
    `fbank` features (where no frame hits the log floor)."""
    from speechssl.models.fbank_upstream import FbankUpstream

    wavs, lengths = random_waves(LENGTHS, seed=4)
    a = FbankUpstream()(wavs, lengths).hidden_states[0]
    b = FbankUpstream(waveform_scale=32768.0)(wavs, lengths).hidden_states[0]
    assert (a - b).abs().max() < 1e-3
    raw_a = FbankUpstream(cmvn="none")(wavs, lengths).hidden_states[0]
    raw_b = FbankUpstream(cmvn="none", waveform_scale=32768.0)(wavs, lengths).hidden_states[0]
    valid = raw_a[0, : int(lengths[0] // 160 - 1), :80]
    shift = (raw_b[0, : valid.shape[0], :80] - valid).mean().item()
    assert shift == pytest.approx(2 * torch.log(torch.tensor(32768.0)).item(), abs=1e-3)  # ~20.8


def test_names_and_global_cmvn_refuses_without_train_stats():
    assert {"fbank", "fbank_no_cmvn", "fbank_global_cmvn"} <= set(BUILTIN_UPSTREAMS)
    assert upstream_name("fbank_global_cmvn") == "fbank_global_cmvn"
    up = load_upstream("fbank_global_cmvn")
    wavs, lengths = random_waves([4000], seed=0)
    with pytest.raises(SpeechSSLError, match="train split's statistics") as err:
        up(wavs, lengths)
    assert "\n" not in str(err.value)
    mean, std = torch.randn(240), torch.rand(240) + 0.5
    up.set_global_stats(mean, std)
    x = up(wavs, lengths).hidden_states[0]
    raw, _ = up.raw_features(wavs, lengths)
    assert torch.allclose(x, (raw - mean) / (1e-10 + std), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        up.set_global_stats(mean[:10], std[:10])
