"""Config loading, overrides and the rules checked before any process group starts."""

import pytest

from bigtrain.config.base import apply_overrides, parse_override
from bigtrain.config.job import JobConfig, load_job_config
from bigtrain.errors import BigtrainError
from tests.helpers import REPO, TINY, bigtrain


def test_overrides_are_typed_and_nested():
    job = load_job_config(TINY, ["model.n_layers=6", "train.lr=1e-3", "data.path=/x/y.npy",
                                 "model.tie_embeddings=true", "parallel.tp=2"])
    assert job.model.n_layers == 6 and job.train.lr == 1e-3 and job.model.tie_embeddings is True
    assert job.data.path == ["/x/y.npy"] and job.parallel.tp == 2


def test_parse_override_reads_yaml_values():
    assert parse_override("data.weights=[0.7, 0.3]") == (["data", "weights"], [0.7, 0.3])
    assert parse_override("tokenizer=null") == (["tokenizer"], None)
    with pytest.raises(BigtrainError, match="expected key=value"):
        parse_override("model.n_layers")
    with pytest.raises(BigtrainError, match="is not a section"):
        apply_overrides({"model": 3}, ["model.n_layers=2"])


def test_world_size_checks():
    job = load_job_config(TINY, ["parallel.tp=2", "parallel.pp=2"])
    assert job.check_world(8) == 2
    with pytest.raises(BigtrainError, match=r"world size 6 is not a multiple of parallel.tp × parallel.pp = 2 × 2 = 4"):
        job.check_world(6)


def test_roundtrip_through_dict():
    job = load_job_config(TINY, [])
    assert JobConfig.from_dict(job.to_dict()) == job


# Each bad config must end in exactly one line on stderr, exit status 2, and no traceback.
BAD_CONFIGS = [
    (["parallel.tp=3"], "parallel.tp=3 does not divide model.n_heads=4"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3 does not divide model.n_heads=4"),
    (["parallel.pp=3"], "parallel.pp=3 does not divide model.n_layers=4 into equal pipeline stages"),
    (["parallel.pp=2", "parallel.zero_stage=2"],
     "parallel.zero_stage=2 is not allowed with parallel.pp=2: DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only"),
    (["parallel.zero_stage=4"], "parallel.zero_stage=4 must be 0, 1, 2 or 3"),
    (["model.n_layer=4"], "unknown config key model.n_layer (known keys under model:"),
    (["model.n_layers=four"], "model.n_layers: expected an integer, got 'four'"),
    (["train.precision=fp16"], "train.precision: expected one of 'fp32', 'bf16', got 'fp16'"),
    (["train.global_batch_size=10", "train.micro_batch_size=4"],
     "train.micro_batch_size=4 does not divide train.global_batch_size=10"),
    (["model.d_model=66"], "model.n_heads=4 does not divide model.d_model=66"),
    (["train.lr=-1"], "train.lr=-1.0 must be positive"),
    (["data.weights=[0.5, 0.5]"], "data.weights has 2 entries but data.path has 1: give one weight per path"),
    (["model.vocab_size=255", "parallel.tp=2"], "parallel.tp=2 does not divide model.vocab_size=255"),
    (["bogus"], "bad override 'bogus': expected key=value"),
    (["train.compile=true", "train.activation_checkpointing=true", "parallel.tp=2"],
     "train.compile=true with train.activation_checkpointing=true needs parallel.tp=1"),
    (["data.reset_position_ids=true"], "data.reset_position_ids=true needs data.document_masking=true"),
    (["lora.rank=4", "lora.dropout=1.5"], "lora.dropout=1.5 must be in [0, 1)"),
    (["lora.rank=4"], "lora.rank=4 trains adapters on fixed starting weights: give them with --init"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=[m[:40] for _, m in BAD_CONFIGS])
def test_bad_config_is_one_line(tmp_path, capsys, overrides, message):
    # in-process: the CLI's own entry point, without a process start per case (one real process below)
    from bigtrain.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", TINY, "--run-dir", str(tmp_path / "run"), *overrides])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bigtrain: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_bad_config_in_a_real_process_is_one_line(tmp_path):
    overrides, message = BAD_CONFIGS[0]
    proc = bigtrain("train", TINY, "--run-dir", str(tmp_path / "run"), *overrides, check=False)
    assert proc.returncode == 2 and proc.stderr == f"bigtrain: error: {message}\n", proc.stderr
    assert not (tmp_path / "run").exists()


def test_world_size_error_before_start(tmp_path):
    env = __import__("tests.helpers", fromlist=["env_for_tests"]).env_for_tests()
    env["WORLD_SIZE"] = "3"
    proc = bigtrain("train", TINY, "--run-dir", str(tmp_path / "r"), "parallel.tp=2", check=False, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("bigtrain: error: world size 3 is not a multiple of parallel.tp × parallel.pp = "
                                   "2 × 1 = 2")


def test_missing_and_malformed_config_files(tmp_path):
    proc = bigtrain("train", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"bigtrain: error: config file not found: {tmp_path / 'nope.yaml'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    proc = bigtrain("train", str(bad), "--run-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_readme_lists_every_config_key():
    """The README's table of config keys names exactly the fields of each section's dataclass."""
    import dataclasses
    import re

    from bigtrain.config.job import JobConfig

    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)`", (REPO / "README.md").read_text(), re.M))

    def keys(cls) -> set[str]:
        out = set()
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(sub):
                out.add(f"{f.name}.{{{','.join(x.name for x in dataclasses.fields(sub))}}}")
            else:
                out.add(f.name)
        return out

    for f in dataclasses.fields(JobConfig):
        section = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            assert set(rows.get(f.name, "").split()) == keys(type(section)), f.name
