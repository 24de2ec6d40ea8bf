"""`speechssl export`: any `load_upstream` source -> the formats the field loads.

Only the backbone is exported (what an upstream is); pretraining heads travel
along where the target format has a place for them under its own names
(fairseq / s3prl sources keep theirs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from speechssl.errors import OutputExistsError
from speechssl.interop.upstream import Upstream, load_upstream, require_network
from speechssl.io import atomic_file
from speechssl.models.checkpoint import is_checkpoint_dir
from speechssl.models.config import ConvFrontendConfig
from speechssl.outputs import check_output, record_output

logger = logging.getLogger(__name__)

FORMATS = ("hf", "s3prl", "fairseq", "onnx", "torchscript")
# Graph formats carry any speechssl network: per-layer sizes, removed blocks, fbank frontends.
GRAPH_FORMATS = ("onnx", "torchscript")
HETEROGENEOUS_FORMATS = (*GRAPH_FORMATS, "a speechssl checkpoint dir (the source itself)")
COMMAND = "export"  # the output marker's name: a re-run of export may replace its own earlier output
# The original-toolkit formats each family has (what its original code and s3prl load).
# WavLM has no fairseq checkpoint: unilm's WavLM is not a fairseq model; its original
# {cfg, model} file is what s3prl's wavlm upstream reads, so `s3prl` writes it.
ORIGINAL_FORMATS = {
    "hubert": ("fairseq", "s3prl"),
    "wav2vec2": ("fairseq", "s3prl"),
    "data2vec_audio": ("fairseq", "s3prl"),
    "unispeech_sat": ("fairseq", "s3prl"),
    "wavlm": ("s3prl",),
}


def check_export_output(source: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """The output-path rule for export (`speechssl.outputs.check_output`), checked before any model
    is loaded; a speechssl checkpoint dir is never replaced, even with `overwrite`."""
    out, is_file = Path(out), fmt != "hf"
    check_output(out, COMMAND, overwrite=overwrite, inputs=(source,), is_file=is_file)
    if is_checkpoint_dir(out):
        raise OutputExistsError(
            f"--out {out} is a speechssl checkpoint; export never replaces one, even with --overwrite:"
            " choose another --out"
        )
    return out


def _fairseq_extras(up: Upstream) -> dict | None:
    """Heads under fairseq names exist only when the source was fairseq / s3prl."""
    return up.extras if "fairseq_model_cfg" in up.extras else None


def _save_pt(checkpoint: dict, out: Path) -> None:
    with atomic_file(out) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)  # a file object keeps a full disk's OSError in the chain


def _refuse_heterogeneous(up: Upstream, fmt: str) -> None:
    enc = up.config.encoder
    if (
        enc.layer_num_heads is not None
        or enc.layer_ffn_dims is not None
        or not isinstance(up.config.frontend, ConvFrontendConfig)
    ):
        raise ValueError(
            f"format '{fmt}' cannot carry this model (its layers differ in size, or it has a filterbank"
            f" frontend); formats that can: {', '.join(HETEROGENEOUS_FORMATS)}"
        )


def _refuse_equal_width_projection(up: Upstream, fmt: str) -> None:
    """fairseq's models (and s3prl's copies) build `post_extract_proj` only when the conv width
    differs from encoder_embed_dim; between equal widths there is nowhere to put a trained
    projection (ours always has one), so only an identity one exports."""
    from speechssl.interop.fairseq_io import fairseq_drops_projection

    if fairseq_drops_projection(up.config, up.model.state_dict()):
        raise ValueError(
            f"format '{fmt}' cannot carry this model: its conv width (frontend.conv_dim[-1] ="
            f" {up.config.frontend.output_dim}) equals encoder.embed_dim, where fairseq's models (and"
            " s3prl's copies) have no feature projection, and this model's is not the identity;"
            f" formats that can: hf, {', '.join(GRAPH_FORMATS)} (or train with a conv width other than"
            " embed_dim, as every preset has)"
        )


def formats_for(family: str) -> tuple[str, ...]:
    """Every export format a (homogeneous, conv-frontend) model of `family` can be written as."""
    original = ORIGINAL_FORMATS.get(family, ())
    return tuple(f for f in FORMATS if f not in ("fairseq", "s3prl") or f in original)


def _refuse_missing_format(family: str, fmt: str) -> None:
    if fmt in ("fairseq", "s3prl") and fmt not in ORIGINAL_FORMATS.get(family, ()):
        hint = " (unilm's WavLM is not a fairseq model; --format s3prl writes its original {cfg, model} file)"
        raise ValueError(
            f"format '{fmt}' does not exist for {family} models{hint if family == 'wavlm' else ''};"
            f" formats that work for {family}: {', '.join(formats_for(family))}"
        )


def export_upstream(
    source: str | Path, fmt: str, out: str | Path, *, verify: bool = True, overwrite: bool = False
) -> Path:
    """Write `source` as `fmt` at `out` (a directory for hf, a file for the others).

    `out` follows the output-path rule (`check_export_output`) before the source is read. The
    source is verified in full (manifest sha256, finite weights) whatever `verify` says: an
    export is what others will use. onnx / torchscript files are checked after writing (with
    `verify`): onnxruntime or torch.jit.load must match the PyTorch model to 1e-4 on a padded
    batch of other sizes than the export batch, else nothing is left at `out`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; valid formats: {', '.join(FORMATS)}")
    out = check_export_output(source, fmt, out, overwrite=overwrite)
    up = require_network(load_upstream(source, verify="sha256"), source, "export")
    if fmt in GRAPH_FORMATS:
        if fmt == "onnx":
            from speechssl.interop.onnx_export import export_onnx

            export_onnx(up, out, verify=verify)
        else:
            from speechssl.interop.torchscript_export import export_torchscript

            export_torchscript(up, out, verify=verify)
        record_output(out, COMMAND)
        logger.info("exported %s as %s -> %s", source, fmt, out)
        return out
    _refuse_heterogeneous(up, fmt)
    _refuse_missing_format(up.config.family, fmt)
    if fmt in ("fairseq", "s3prl"):
        _refuse_equal_width_projection(up, fmt)
    state = up.model.state_dict()
    if fmt == "hf":
        from speechssl.interop.transformers_io import save_transformers

        save_transformers(state, up.config, out, command=COMMAND, overwrite=overwrite)
    elif fmt == "fairseq":
        from speechssl.interop.fairseq_io import to_fairseq

        _save_pt(to_fairseq(up.config, state, extras=_fairseq_extras(up)), out)
    else:
        from speechssl.interop.s3prl_io import to_s3prl

        _save_pt(to_s3prl(up.config, state, extras=_fairseq_extras(up)), out)
    if fmt != "hf":
        record_output(out, COMMAND)
    logger.info("exported %s as %s -> %s", source, fmt, out)
    return out
