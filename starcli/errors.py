"""Exceptions the engine raises; the CLI turns them into one-line messages and exit codes.

`StarcliError` is a run-time failure (exit 1). `UsageError` is a bad request that was
detected before any work was done (exit 2). Messages are complete sentences that name the
file or flag involved and say what to do next.
"""


class StarcliError(Exception):
    """A run-time failure: exit code 1."""

    exit_code = 1


class UsageError(StarcliError):
    """A bad option or argument, found by the engine before doing work: exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration that can never work (wrong sizes, unknown names)."""


class UnknownDatasetError(UsageError):
    """A dataset name that is not in the registry."""


class DatasetNotFoundError(StarcliError):
    """A dataset is known but its raw or prepared files are missing."""


class DownloadError(StarcliError):
    """Every source for a file failed."""


class ChecksumError(StarcliError):
    """A file's size or digest differs from the registry."""


class ArchiveError(StarcliError):
    """An archive is corrupt or tries to write outside its target."""


class ShardError(StarcliError):
    """A prepared shard is missing, unreadable or fails its checksum."""


class CheckpointError(StarcliError):
    """A checkpoint is missing, incomplete, unsafe or does not match the model."""


class TrainingError(StarcliError):
    """Training had to stop (for example a non-finite loss)."""
