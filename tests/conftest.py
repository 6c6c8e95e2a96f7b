import pytest
import torch

from tests.helpers import REPO, bigtrain


@pytest.fixture(scope="session")
def corpus_tokenizer_dir(tmp_path_factory):
    """A 512-token sentencepiece tokenizer of the bundled corpus, trained once per test session."""
    out = tmp_path_factory.mktemp("corpus-tok") / "tok"
    bigtrain("tokenizer", "train", "--input", str(REPO / "data" / "python-docs.jsonl.gz"), "--vocab-size", "512",
             "--output", str(out))
    return out


@pytest.fixture(scope="session")
def corpus_tokenizer(corpus_tokenizer_dir):
    from bigtrain.tokenizer import load_tokenizer

    return load_tokenizer(corpus_tokenizer_dir)


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray with 2 CPUs for one test module's in-process preprocessing."""
    import ray

    from bigtrain.data.preprocess import init_local_ray

    init_local_ray(2)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
