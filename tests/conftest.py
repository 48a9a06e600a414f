import os
import shutil
import tempfile


def pytest_addoption(parser):
    parser.addoption("--hypothesis-examples", type=int, default=None,
                     help="examples per property test in test_properties.py (default 30; the OpenCL property "
                          "runs a third as many); also CNNGRAPH_HYPOTHESIS_EXAMPLES")
    parser.addoption("--fuzz-examples", type=int, default=None,
                     help="cases of the spec fuzzer in test_fuzz.py (default 500; the CLI fuzz test runs a fifth "
                          "as many); also CNNGRAPH_FUZZ_EXAMPLES. CNNGRAPH_FUZZ_SEED=S runs fresh random cases")



_OWN_CACHE = []  # the cache folder this run made, removed when it ends


def pytest_configure(config):
    """The kernel cache of a test run lives in a folder of its own, not in the user's
    ~/.cache/cnngraph (tests of the cache itself point it elsewhere again)."""
    if "CNNGRAPH_CACHE_DIR" not in os.environ:
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="cnngraph-test-cache-"))
        os.environ["CNNGRAPH_CACHE_DIR"] = _OWN_CACHE[0]


def pytest_unconfigure(config):
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def every_memory_plan_is_checked(monkeypatch):
    """Every plan any test makes goes through the independent safety check of plan_safety.py."""
    import cnngraph.model
    from plan_safety import assert_plan_safe

    planned = cnngraph.model.plan_memory

    def checked(g):
        g = planned(g)
        assert_plan_safe(g)
        return g
    monkeypatch.setattr(cnngraph.model, "plan_memory", checked)
