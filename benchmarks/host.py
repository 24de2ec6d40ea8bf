"""Row group "host": what a pretraining step costs the host, which bounds a GPU step (issue 18:
the H200 profile saw the GPU busy 47 % of our HuBERT Base step, at about 1,350 kernel launches).

At Base depth (7 convs, 12 layers) but widths of 32 (`pretrain_config(narrow=True)`) compute is
negligible, so a step's CPU time is its dispatch: ours vs torchaudio's HuBERT and transformers'
wav2vec 2.0, interleaved, each with its own optimizer as it runs on a GPU (theirs: torch's AdamW
in its multi-tensor form, CUDA's default). Two counts that do not depend on the machine's load
come with it: the aten ops of one step that compute (each a kernel launch on a GPU), and the
graphs `torch.compile` splits our step into (`torch._dynamo.explain`; every break is host work
between two compiled graphs, and CUDA graphs replay one graph at a time).
"""

from __future__ import annotations

import cProfile
import pstats
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import speechssl
from benchmarks.common import waves
from benchmarks.harness import Case, Row, Settings, Spec, Step, make_row, run_cases
from benchmarks.pretrain import pretrain_config
from speechssl.objectives import build_pretrain_model

GROUP = "host"
SPEECHSSL_DIR = str(Path(speechssl.__file__).resolve().parent)
PRESETS = {"hubert": ("hubert_base", "torchaudio"), "wav2vec2": ("wav2vec2_base", "transformers")}
MASKS = {  # what the op counts include besides the network
    "hubert": "both draw their masks with torch ops",
    "wav2vec2": "transformers draws masks and distractors in numpy (not counted), ours with torch ops",
}


# aten ops that launch no kernel on a GPU: views, metadata, allocations (and host reads: a sync,
# not a launch; none is in our GPU step)
NO_KERNEL = frozenset(
    "aten::" + name
    for name in (
        "t", "transpose", "view", "_unsafe_view", "reshape", "_reshape_alias", "detach", "unsqueeze",
        "squeeze", "expand", "expand_as", "permute", "slice", "select", "as_strided", "alias", "split",
        "split_with_sizes", "chunk", "unbind", "narrow", "lift_fresh", "view_as", "flatten", "unflatten",
        "movedim", "diagonal", "resolve_conj", "resolve_neg", "empty", "empty_like", "empty_strided",
        "new_empty", "contiguous", "to", "numpy_T", "result_type", "is_nonzero", "_local_scalar_dense",
        "item",
    )
)  # fmt: skip


def device_ops(step: Step) -> int:
    """aten ops of one steady-state call of `step` that compute: those with no computing aten op
    below them (views, allocations and host syncs compute nothing here), each multi-tensor
    `_foreach_*` op once (a CPU runs it as a loop of per-tensor ops, a GPU as a few fused
    launches). On a GPU each is about one kernel launch or copy. The first calls, which create the
    optimizer's state, are not counted."""
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()

    def computing(event) -> bool:
        return event.name.startswith("aten::") and event.name not in NO_KERNEL

    def below(event) -> bool:  # a computing op under `event`
        return any(computing(child) or below(child) for child in event.cpu_children)

    def under_foreach(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::_foreach_"):
                return True
            parent = parent.cpu_parent
        return False

    def counted(event) -> bool:
        if not computing(event) or under_foreach(event):
            return False
        return event.name.startswith("aten::_foreach_") or not below(event)

    return sum(1 for e in prof.events() if counted(e))


def python_shares(step: Step, calls: int = 10) -> tuple[float, float]:
    """(% of `step`'s profiled CPU time spent in Python frames, % in speechssl's own) by cProfile:
    the rest is torch's C++ (ops, autograd), which only fewer ops or compiled graphs reduce."""
    step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())  # self time of every function
    python = sum(entry[2] for (filename, _, _), entry in stats.items() if filename != "~")  # "~": builtins
    ours = sum(entry[2] for (filename, _, _), entry in stats.items() if SPEECHSSL_DIR in filename)
    return 100 * python / total, 100 * ours / total


def compiled_graphs(family: str, preset: str, seconds: list[float], padding_free: bool = False) -> int:
    """How many graphs torch.compile makes of our step's forward (1 = no graph break)."""
    config = pretrain_config(family, preset, None, narrow=True)
    torch.manual_seed(0)
    model = build_pretrain_model(config)
    getattr(model, family).padding_free = padding_free
    wavs, lengths = waves(seconds)
    inputs: list[torch.Tensor] = [wavs, lengths]
    if family == "hubert":
        frames = int(model.hubert.num_frames(lengths).max())
        inputs.append(torch.randint(0, config.hubert.num_classes[0], (len(seconds), frames)))
    torch._dynamo.reset()
    graphs = torch._dynamo.explain(model)(*inputs).graph_count
    torch._dynamo.reset()
    return graphs


def _spec(contender: str, family: str, preset: str, seconds: list[float]) -> Spec:
    kwargs = {"contender": contender, "family": family, "preset": preset, "seconds": seconds, "narrow": True,
              "optimizer": "recipe_foreach"}  # fmt: skip
    return Spec(module="benchmarks.pretrain", factory="pretrain_step", kwargs=kwargs)


def run(settings: Settings) -> list[Row]:
    seconds = [0.5, 0.45] if settings.tiny else [0.5, 0.45, 0.4, 0.35, 0.5, 0.3, 0.45, 0.5]
    batch = f"batch {len(seconds)} x <= {max(seconds):g} s"
    no_memory = replace(settings, memory=False)  # the widths make memory meaningless
    rows: list[Row] = []
    for family, (preset, reference) in PRESETS.items():
        name = f"{preset} depth at widths of 32, step (fwd+bwd+AdamW), {batch}"
        specs = {c: _spec(c, family, preset, seconds) for c in ("ours", reference)}
        case = Case(name=name, work=1.0, unit="steps/s", contenders=specs)
        rows += run_cases(GROUP, [case], no_memory, note="dispatch; compute is negligible")
        python, own = python_shares(specs["ours"].build())
        rows.append(make_row(GROUP, f"{name}: ours, share of CPU time in Python frames", python, None, "%",
                             note=f"cProfile self time; {own:.1f} % in speechssl's own"))  # fmt: skip
        ours, ref = (device_ops(spec.build()) for spec in specs.values())
        note = "torch.profiler: ops with no computing op below them; " + MASKS[family]
        rows.append(make_row(GROUP, f"{name}: aten ops that compute per step vs {reference}", ours, ref,
                             "ops", higher_is_better=False, note=note))  # fmt: skip
        for padding_free in (False, True):
            graphs = compiled_graphs(family, preset, seconds, padding_free)
            kind = "padding-free" if padding_free else "padded"
            rows.append(make_row(GROUP, f"{preset} {kind} step under torch.compile: graphs", graphs, None,
                                 "graphs", higher_is_better=False,
                                 note="torch._dynamo.explain; 1 = no graph break"))  # fmt: skip
    return rows
