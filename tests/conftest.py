def pytest_addoption(parser):
    parser.addoption("--hypothesis-examples", type=int, default=None,
                     help="examples per property test in test_properties.py (default 30; the OpenCL property "
                          "runs a third as many); also CNNGRAPH_HYPOTHESIS_EXAMPLES")
    parser.addoption("--fuzz-examples", type=int, default=None,
                     help="cases of the spec fuzzer in test_fuzz.py (default 500; the CLI fuzz test runs a fifth "
                          "as many); also CNNGRAPH_FUZZ_EXAMPLES. CNNGRAPH_FUZZ_SEED=S runs fresh random cases")
