"""The host work of a pretraining step stays out of torch.compile's graphs (models.devices.host_side).

The trainer passes the loader's lengths on the host; the masks, frame counts and frame indices
drawn from them are host work. A compiled graph that mixes host and device tensors is not run as a
CUDA graph (trainer.compile_mode reduce-overhead), and inductor failed to compile one for
hubert_tiny on an H200. Here the meta device stands in for the accelerator: the model and the
batch live there, the lengths on the CPU, and every graph that holds tensors must hold meta
tensors only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.testing.datadirs import frame_units_dataset
from speechssl.training.pretrain import BatchObjective
from speechssl.training.trainer import to_device
from tests.gpu._gpu import tiny_pretrain_model


@pytest.fixture(scope="module")
def host_batch(tmp_path_factory):
    """A static-shapes batch of padded utterances, as the trainer passes it: all on the "device"
    (meta), the lengths also on the host."""
    dataset = frame_units_dataset(tmp_path_factory.mktemp("data") / "data")
    batching = BatchingConfig(max_batch_seconds=4.0, max_seconds=1.0, static_shapes=2)
    batch = next(iter(build_loader(dataset, batching, train=True, seed=0)))
    assert int(batch.wav_lens.min()) < batch.wavs.shape[1], "the batch must hold padding"
    return dataclasses.replace(to_device(batch, "meta"), host_wav_lens=batch.wav_lens)


@pytest.mark.parametrize(
    ("preset", "normalize"),  # WavLM normalises after mixing, from the host lengths (wavlm_large does)
    [("hubert_tiny", False), ("wav2vec2_tiny", False), ("wavlm_tiny", False), ("wavlm_tiny", True),
     ("data2vec_tiny", False)],
)  # fmt: skip
def test_compiled_step_graphs_take_device_tensors_only(preset, normalize, host_batch):
    units = ["units"] if preset.startswith(("hubert", "wavlm")) else []
    model = BatchObjective(tiny_pretrain_model(preset), units, normalize=normalize).to("meta").train()
    graphs: list[set[str]] = []

    def record_devices(gm, inputs):
        # 0-dim CPU tensors are Python scalars lifted by dynamo (a CUDA graph takes them)
        graphs.append({str(t.device) for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0})
        return gm.forward

    torch._dynamo.reset()
    try:
        loss, _ = torch.compile(model, backend=record_devices, dynamic=True)(host_batch)
    finally:
        torch._dynamo.reset()
    assert loss.device.type == "meta"
    with_tensors = [devices for devices in graphs if devices]
    assert with_tensors and all(devices == {"meta"} for devices in with_tensors), graphs


def test_the_library_imports_without_torch_compiles_machinery():
    """host_side marks its functions lazily: torch._dynamo (about 1.4 s) loads at the first host-side
    call, not at import, so the commands that never run a model start without it."""
    import subprocess
    import sys

    probe = (
        "import sys\nfrom speechssl.cli.main import build_parser\n"
        "build_parser()  # every command's module, so the whole library\n"
        "print('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
