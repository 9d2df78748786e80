"""Every command of `retentiond`, one module per command group: parse, call, print."""
