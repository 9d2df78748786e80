"""retentiond: GDPR retention enforcement for on-premises phone systems."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retentiond")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
