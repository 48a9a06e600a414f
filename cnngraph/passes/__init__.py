"""Graph passes: small functions over the graph, run in a flat pipeline (see `pipeline.py`)."""
