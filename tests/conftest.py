def pytest_addoption(parser):
    parser.addoption("--hypothesis-examples", type=int, default=None,
                     help="examples per property test in test_properties.py (default 30; the OpenCL property "
                          "runs a third as many); also CNNGRAPH_HYPOTHESIS_EXAMPLES")
