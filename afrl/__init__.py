"""AFRL relevance: the contract, model loading, the reference scorer and the `afrl` command line."""
