"""Errors the command line reports in one line; here, with no heavy imports, so ``mmrlhf --help`` stays instant."""


class CheckpointUnreachable(OSError):
    """A checkpoint named by hub id that can be neither downloaded nor found in the local cache."""
