"""The README's examples as written: every `speechssl ...` command names a real subcommand and only
options its parser has, every `run.sh` line only options its recipe declares, every `make` target
exists, Python snippets use no undefined names, and the examples that run in the embedded corpus's
recipe dirs (`cd egs/mini_synth/...`) name only what the demo (`make demo`) has made."""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.__main__ import build_parser as build_bench_parser
from speechssl.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
TEMPLATE = re.compile(r"\./(ssl|superb|compress)\.sh\b")


@dataclass(frozen=True)
class Command:
    """One command of a README example: its words and the dir it runs in (after a `cd`)."""

    words: tuple[str, ...]
    cwd: str  # relative to the repo root ("" = the root)
    line: int  # of the README
    block: str = ""  # the whole example, comments included

    def where(self) -> str:
        return f"README.md:{self.line}: {' '.join(self.words)[:120]}"


def blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(first line number, body) of every fenced block in LANGUAGE."""
    return [
        (text[: m.start()].count("\n") + 2, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


def inline_commands(text: str) -> list[tuple[int, str, str]]:
    """Commands quoted inline in the prose (`speechssl kmeans import --model km.bin ...`), with the
    recipe dir a `./run.sh` runs in: the `egs/<corpus>/<recipe>` its paragraph names nearest to it."""
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    found = []
    for m in re.finditer(r"`([^`]+)`", prose):
        code = m.group(1).replace("\n", " ")
        if not re.match(r"(speechssl \w|\S*run\.sh --|python -m benchmarks)", code) or " --" not in code:
            continue
        para_start = prose.rfind("\n\n", 0, m.start()) + 1
        para_end = prose.find("\n\n", m.end()) % (len(prose) + 1)
        dirs = [
            (abs(para_start + d.start() - m.start()), d.group(1))
            for d in re.finditer(r"(egs/\w+/\w+)\b(?!/run)", prose[para_start:para_end])
        ]
        cwd = min(dirs)[1] if dirs and code.startswith("./") else ""
        found.append((prose[: m.start()].count("\n") + 1, code, cwd))
    return found


def split_commands(first_line: int, body: str, cwd: str = "") -> list[Command]:
    """Shell lines joined over `\\`, comments dropped, split at `&&`, `;` and `|`; a line `cd DIR`
    sets the dir of the lines after it, `cd DIR && ...` of the rest of its line. Placeholders stay
    words (`[--nj 4]` gives `--nj`, `4`)."""
    commands: list[Command] = []
    logical, start, block_cwd = "", first_line, cwd
    for i, line in enumerate(body.split("\n")):
        if not logical:
            start = first_line + i
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        words, logical = shlex.split(logical + line, comments=True), ""
        if words[:1] == ["cd"] and len(words) == 2:
            block_cwd = words[1] if words[1].startswith("/") else str(Path(block_cwd, words[1]))
            continue
        cwd = block_cwd
        current: list[str] = []
        for word in [*words, ";"]:
            if word not in ("&&", ";", "||", "|"):
                current.append(word.strip("[]"))
            elif current[:1] == ["cd"] and len(current) == 2:
                cwd = current[1] if current[1].startswith("/") else str(Path(cwd, current[1]))
                current = []
            elif current:
                commands.append(Command(tuple(current), cwd, start, body))
                current = []
    return commands


def shell_commands() -> list[Command]:
    text = README.read_text()
    commands = [c for first, body in blocks(text, "bash") for c in split_commands(first, body)]
    commands += [c for line, code, cwd in inline_commands(text) for c in split_commands(line, code, cwd)]
    return commands


def subparser_of(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The (sub)parser the leading words choose, and how many words named it."""
    used = 0
    while True:
        choices = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not choices or used >= len(words) or words[used] not in choices[0].choices:
            return parser, used
        parser, used = choices[0].choices[words[used]], used + 1


def options_in(words: list[str]) -> list[str]:
    """`--name` words (an alternative list such as `--x|--y` counts each)."""
    found = []
    for word in words:
        for part in word.split("|"):
            if re.match(r"--[a-z]", part):
                found.append(part.split("=", 1)[0])
    return found


def speechssl_args(command: Command) -> list[str] | None:
    """The words after `speechssl` (also `python -m speechssl`, `torchrun ... -m speechssl`)."""
    words = list(command.words)
    if words[0] == "speechssl":
        return words[1:]
    if "-m" in words and words.index("-m") + 1 < len(words) and words[words.index("-m") + 1] == "speechssl":
        return words[words.index("-m") + 2 :]
    return None


def recipe_options(run_sh: Path) -> set[str]:
    """What `run.sh --x` accepts: its template's declared variables and the options run.sh reads itself."""
    text = run_sh.read_text()
    template = TEMPLATE.search(text)
    assert template, f"{run_sh} calls no recipe template"
    names = set(
        re.findall(r"^([a-z_][a-z0-9_]*)=", (REPO / "recipes" / f"{template.group(1)}.sh").read_text(), re.M)
    )
    names |= set(re.findall(r"= --([a-z_][a-z0-9_]*) \]", text))
    return names | {"help"}


def recipe_of(command: Command) -> list[Path] | None:
    """The run.sh a command calls (`./run.sh` in the dir it was cd'ed to, or `egs/.../run.sh`); every
    recipe's for a `./run.sh` the README quotes without its dir (`./run.sh --stage N --stop_stage M`)."""
    head = command.words[0]
    if not head.endswith("run.sh"):
        return None
    if head == "./run.sh" and not command.cwd:
        return sorted(REPO.glob("egs/*/*/run.sh"))
    path = REPO / command.cwd / head
    assert path.is_file(), f"{command.where()}: {path.relative_to(REPO)} does not exist"
    return [path]


def test_readme_has_examples_to_check():
    commands = shell_commands()
    assert sum(speechssl_args(c) is not None for c in commands) > 30
    assert sum(recipe_of(c) is not None for c in commands) >= 5, [c.words for c in commands]


def test_every_speechssl_command_and_option_exists():
    root = build_parser()
    problems = []
    for command in shell_commands():
        args = speechssl_args(command)
        if args is None:
            continue
        parser, used = subparser_of(root, args)
        if used == 0 or any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            problems.append(f"{command.where()}: no such command (`speechssl {' '.join(args[:2])}`)")
            continue
        for option in options_in(args[used:]):
            if option not in parser._option_string_actions:
                problems.append(f"{command.where()}: `speechssl {' '.join(args[:used])}` has no {option}")
    assert not problems, "\n".join(problems)


def test_every_recipe_option_exists():
    problems = []
    for command in shell_commands():
        recipes = recipe_of(command)
        if recipes is None:
            continue
        known, words = set().union(*map(recipe_options, recipes)), list(command.words[1:])
        where = recipes[0].relative_to(REPO) if len(recipes) == 1 else "any recipe"
        i = 0
        while i < len(words):  # parse_options.sh: every --x takes the next word as its value
            word = words[i]
            if word.startswith("--"):
                name = word[2:].split("=", 1)[0].replace("-", "_")
                if name not in known:
                    problems.append(f"{command.where()}: {where} has no option --{name}")
                i += 1 if "=" in word else 2
            else:
                i += 1
    assert not problems, "\n".join(problems)


def test_make_targets_and_benchmark_options_exist():
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), re.M))
    bench = build_bench_parser()._option_string_actions
    problems = []
    for command in shell_commands():
        words = list(command.words)
        if words[0] == "make":
            problems += [
                f"{command.where()}: no make target {t}"
                for t in words[1:]
                if "=" not in t and t not in targets
            ]
        if words[:3] == ["python", "-m", "benchmarks"]:
            problems += [f"{command.where()}: no option {o}" for o in options_in(words[3:]) if o not in bench]
    assert not problems, "\n".join(problems)


def test_python_snippets_use_no_undefined_names(tmp_path):
    snippets = blocks(README.read_text(), "python")
    assert len(snippets) >= 3
    for line, body in snippets:
        (tmp_path / f"readme_{line}.py").write_text(body)
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [
            str(ruff),
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "F821,F822",
            "--output-format",
            "concise",
            ".",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, "README python snippets (file name = first line):\n" + result.stdout


# What `make demo` (egs/mini_synth/ssl1/run.sh with its defaults) leaves in egs/mini_synth/ssl1:
# units mfcc_k50 and hubert_iter1_layer2_k100 (ssl.sh's units_name with --n_clusters "50 100"
# --km_layers 2), two 4-layer HuBERTs, their features and k-means models.
MINI = "egs/mini_synth"
DEMO_UNITS = ("units_mfcc_k50", "units_hubert_iter1_layer2_k100")
DEMO_PATHS = {
    "data/read",  # a dir of train/dev/test splits: what `downstream train --data` takes
    *(f"data/read/{s}" for s in ("train", "dev", "test")),
    *(f"data/read/{s}/{u}" for s in ("train", "dev") for u in DEMO_UNITS),
    *(f"data/read/{s}/{u}/labels" for s in ("train", "dev") for u in DEMO_UNITS),
    "data/read/dev/phone_ctm",
    *(f"dump/{f}/read/{s}" for f in ("mfcc", "hubert_iter1_layer2") for s in ("train", "dev")),
    "exp/kmeans_iter1_mfcc_k50",
    "exp/kmeans_iter2_hubert_iter1_layer2_k100",
    *(f"exp/hubert_iter{i}/checkpoints/{c}" for i in (1, 2) for c in ("last", "best")),
    "exp/hubert.onnx",
    "data",
    "data/noise/train",
}
# superb1's stage 1 (`./run.sh --stop_stage 1`) lays out the task data dirs; compress1 makes two models
SUPERB_DATA = {
    f"data/{t}{s}"
    for t in ("pr", "asr", "ks", "ic", "sid", "asv", "sd", "sf", "mlpr", "lid")
    for s in ("", "/train", "/train/text")
} | {"data/qbe"}
COMPRESSED = {"../compress1/exp/distill/final", "../compress1/exp/prune/final"}
INPUTS = {"--data", "--feats", "--model", "--upstream", "--labels", "--alignments", "--train", "--valid",
          "--teacher", "--init-from", "--noise", "--exps", "--text", "--upstreams",
          "--train_set", "--valid_set", "--corpus_dir"}  # fmt: skip


def demo_layers() -> int:
    conf = yaml.safe_load((REPO / MINI / "ssl1/conf/pretrain_hubert_tiny.yaml").read_text())
    return conf["model"]["encoder"]["num_layers"]


def made_before(command: Command, written: set[str]) -> set[str]:
    """What exists, seen from the command's dir, once the demo (and what the README ran before) ran."""
    there = {*(f"../ssl1/{p}" for p in DEMO_PATHS), *written}
    if command.cwd == f"{MINI}/ssl1":
        there |= DEMO_PATHS
    if command.cwd == f"{MINI}/superb1":
        there |= SUPERB_DATA
    if "compress1/run.sh" in command.block:  # the example says that the compression recipe ran
        there |= COMPRESSED
    return there


def values_after(words: list[str], i: int) -> list[str]:
    """The words after option i, placeholders (`SRC`, `DIR (WavLM)`) left out."""
    values = []
    for value in words[i + 1 :]:
        if value.startswith("-"):
            break
        if re.fullmatch(r"[A-Z][A-Z_]*|\(.*", value):
            continue
        if words[i] == "--upstreams":  # the recipe's "a b c"; compare's name=path
            values += [v.split("=", 1)[-1] for v in value.split()]
        else:
            values.append(value)
    return values


def test_examples_in_the_demo_dirs_use_what_the_demo_made():
    """Examples that `cd egs/mini_synth/<recipe>` run against the demo's outputs: their inputs are among
    them (or were written by an earlier command of the README there), configs exist, layers exist."""
    problems, written = [], {}
    for command in shell_commands():
        if not command.cwd.startswith(MINI):
            continue
        args = speechssl_args(command)
        words = list(command.words[1:] if args is None else args)
        done = written.setdefault(command.cwd, set())
        there = made_before(command, done)
        for i, word in enumerate(words):
            values = values_after(words, i)
            if word in INPUTS:
                values = [v.removeprefix("tokens:") for v in values]  # a tokens dir as an upstream
                missing = [v for v in values if not v.startswith("fbank") and not fnmatch.filter(there, v)]
                problems += [f"{command.where()}: {word} {v} is not made by the demo" for v in missing]
            if word in ("--config", "--distill_config", "--prune_config") and values:
                if not (REPO / command.cwd / values[0]).is_file():
                    problems.append(f"{command.where()}: {word} {values[0]} does not exist there")
            if word == "--layer" and values and values[0].isdigit() and int(values[0]) > demo_layers():
                problems.append(f"{command.where()}: --layer {values[0]} of a {demo_layers()}-layer model")
            if word == "--units" and values and f"data/read/train/{values[0]}" not in there:
                problems.append(f"{command.where()}: --units {values[0]}: the demo's are {DEMO_UNITS}")
            if word in ("--out", "--plot") and values:
                done |= {values[0], *(f"{values[0]}/{n}" for n in ("labels", "checkpoints/last", "final"))}
    assert not problems, "\n".join(problems)


def test_benchmarks_run_from_any_directory(tmp_path):
    """`python path/to/benchmarks` works outside the repo root (`python -m benchmarks` needs it)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks"), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--only NAME" in result.stdout, result.stderr[-2000:]


# The user guide's chapters, in order. A README edit that cut the file short once dropped the last
# five of them (recipes, tuning, compression, export, performance) without any other test noticing.
CHAPTERS = ("Quick start", "Your files are safe", "Data directories", "Embedded corpus", "Public corpora",
            "Models", "Pretraining", "Analysis", "Tokens", "Downstream", "Compression", "Export",
            "Performance", "Development")  # fmt: skip


def test_readme_keeps_every_chapter_in_order():
    headings = [line[3:] for line in README.read_text().splitlines() if line.startswith("## ")]
    found = [next((h for h in headings if h.startswith(c)), None) for c in CHAPTERS]
    assert None not in found, f"README.md lost chapters: {[c for c, h in zip(CHAPTERS, found) if h is None]}"
    assert [headings.index(h) for h in found] == sorted(headings.index(h) for h in found), headings
