"""Malformed inputs across the whole CLI: each ends in one line naming the problem, exit status 2, no
traceback, and nothing half-written left behind."""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY, bigtrain

CORPUS = str(REPO / "data" / "python-docs.jsonl.gz")


@pytest.fixture(scope="module")
def good(tmp_path_factory, corpus_tokenizer_dir):
    """A real tokenizer, dataset and checkpoint to damage one piece at a time."""
    root = tmp_path_factory.mktemp("good")
    shutil.copytree(corpus_tokenizer_dir, root / "tok")  # the session's tokenizer; cases may damage this copy
    bigtrain("preprocess", "--input", CORPUS, "--tokenizer", str(root / "tok"), "--output", str(root / "data"),
             "--num-shards", "2", "--heldout-fraction", "0.05", "--workers", "1", "--quiet")
    bigtrain("train", TINY, "--run-dir", str(root / "run"), f"data.path={root / 'data'}", "model.vocab_size=512",
             "model.n_layers=1", "train.max_steps=2", "checkpoint.interval=2")
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _ckpt(run: Path) -> Path:
    return next((run / "checkpoints").glob("step_*"))


def case_config_not_a_mapping(good, tmp):
    cfg = tmp / "list.yaml"
    cfg.write_text("- model\n- train\n")
    return ["train", str(cfg), "--run-dir", str(tmp / "r")], f"{cfg}: expected a mapping of sections at the top level"


def case_config_section_not_mapping(good, tmp):
    cfg = tmp / "bad.yaml"
    cfg.write_text("model: 3\n")
    return ["train", str(cfg), "--run-dir", str(tmp / "r")], "model: expected a mapping, got 3"


def case_tokenizer_input_missing(good, tmp):
    return (["tokenizer", "train", "--input", str(tmp / "none.txt"), "--vocab-size", "400", "--output",
             str(tmp / "t")], str(tmp / "none.txt"))


def case_preprocess_empty_file(good, tmp):
    (tmp / "empty.jsonl").write_text("")
    return (["preprocess", "--input", str(tmp / "empty.jsonl"), "--tokenizer", str(good / "tok"), "--output",
             str(tmp / "o")], "empty.jsonl")


def case_preprocess_truncated_gzip(good, tmp):
    data = gzip.compress(b'{"text": "hello world"}\n' * 2000)
    (tmp / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    return (["preprocess", "--input", str(tmp / "cut.jsonl.gz"), "--tokenizer", str(good / "tok"), "--output",
             str(tmp / "o")], "cut.jsonl.gz")


def case_preprocess_bad_tokenizer(good, tmp):
    (tmp / "tk").mkdir()
    (tmp / "tk" / "tokenizer.model").write_bytes(b"this is not a sentencepiece model")
    return (["preprocess", "--input", CORPUS, "--tokenizer", str(tmp / "tk"), "--output", str(tmp / "o")],
            "not a sentencepiece model")


def case_manifest_not_json(good, tmp):
    d = _copy(good / "data", tmp / "data")
    (d / "manifest.json").write_text("{ not json")
    return (["train", TINY, "--run-dir", str(tmp / "r"), f"data.path={d}", "model.vocab_size=512"],
            "manifest.json")


def case_shard_truncated(good, tmp):
    d = _copy(good / "data", tmp / "data")
    shard = sorted((d / "train").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:700])
    return (["train", TINY, "--run-dir", str(tmp / "r"), f"data.path={d}", "model.vocab_size=512",
             "train.max_steps=200"], shard.name)


def case_shard_bytes_flipped(good, tmp):
    d = _copy(good / "data", tmp / "data")
    shard = sorted((d / "train").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other tokens: only the manifest's sha256 can tell
    data[len(data) // 2 + 1] ^= 0xFF
    shard.write_bytes(bytes(data))
    return (["train", TINY, "--run-dir", str(tmp / "r"), f"data.path={d}", "model.vocab_size=512",
             "train.max_steps=200"], f"{shard.name}: shard's sha256 is not the one in the manifest")


def case_shard_missing(good, tmp):
    d = _copy(good / "data", tmp / "data")
    shard = sorted((d / "train").glob("*.tar"))[-1]
    shard.unlink()
    return (["train", TINY, "--run-dir", str(tmp / "r"), f"data.path={d}", "model.vocab_size=512"],
            f"{shard.name}: shard listed in the manifest is missing")


def case_vocab_too_small_for_data(good, tmp):
    return (["train", TINY, "--run-dir", str(tmp / "r"), f"data.path={good / 'data'}", "model.vocab_size=256"],
            "model.vocab_size")


def case_resume_without_checkpoint(good, tmp):
    return ["train", "--resume", str(tmp / "nothing")], f"--resume {tmp / 'nothing'}: no complete checkpoint"


def case_checkpoint_meta_not_json(good, tmp):
    run = _copy(good / "run", tmp / "run")
    (_ckpt(run) / "bigtrain.json").write_text("{")
    return ["export-hf", "--input", str(_ckpt(run)), "--output", str(tmp / "hf")], "bigtrain.json: not valid JSON"


def case_checkpoint_missing_model_file(good, tmp):
    run = _copy(good / "run", tmp / "run")
    (_ckpt(run) / "mp_rank_00_model_states.pt").unlink()
    return ["convert", "--input", str(_ckpt(run)), "--output", str(tmp / "c"), "--to", "consolidated"], \
        "mp_rank_00_model_states.pt is missing"


def case_generate_from_non_checkpoint(good, tmp):
    (tmp / "empty").mkdir()
    return ["generate", "--checkpoint", str(tmp / "empty"), "--prompt", "hi"], "no complete checkpoint"


def case_hf_dir_without_config(good, tmp):
    (tmp / "hf").mkdir()
    return ["import-hf", "--input", str(tmp / "hf"), "--output", str(tmp / "ck")], "config.json"


def case_hf_config_not_llama(good, tmp):
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    return ["import-hf", "--input", str(tmp / "hf"), "--output", str(tmp / "ck")], "model_type 'gpt2' is not supported"


def case_override_unknown_section(good, tmp):
    return ["train", TINY, "--run-dir", str(tmp / "r"), "optimizer.lr=1"], "unknown config key optimizer"


def case_layout_impossible_for_checkpoint(good, tmp):
    return ["convert", "--input", str(good / "run"), "--output", str(tmp / "c"), "--tp", "3"], "tp=3"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_is_one_line(good, tmp_path, case):
    args, fragment = case(good, tmp_path)
    before = set(p.name for p in tmp_path.iterdir())
    proc = bigtrain(*args, check=False, fresh=True)  # what a user's new process prints, imports and all
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("bigtrain: error: ") and fragment in lines[-1], lines[-3:]
    assert len([line for line in lines if line.startswith("bigtrain: error")]) == 1
    # Nothing that looks like a finished output was created.
    for name in set(p.name for p in tmp_path.iterdir()) - before:
        out = tmp_path / name
        assert not (out / "manifest.json").exists() and not (out / "config.json").exists() \
            and not (out / "bigtrain.json").exists(), name


# Commands whose bad inputs are one-line errors tested in their own modules.
ELSEWHERE = {"eval": "tests/e2e/test_eval_heldout.py", "finetune": "tests/e2e/test_finetune_sft.py",
             "plan": "tests/unit/test_plan.py", "launch": "tests/distributed/test_launch_cli.py"}


def test_every_command_has_a_bad_input_case(good, tmp_path):
    """Each subcommand of the CLI has a bad-input case here or in the module named in ELSEWHERE: a new command
    without one fails this test."""
    from bigtrain.cli import build_parser

    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    here = set()
    for case in CASES:
        (tmp_path / case.__name__).mkdir()
        here.add(case(good, tmp_path / case.__name__)[0][0])
    assert commands == here | set(ELSEWHERE), sorted(commands ^ (here | set(ELSEWHERE)))
    for command, module in ELSEWHERE.items():
        assert "returncode == 2" in (REPO / module).read_text(), (command, module)
