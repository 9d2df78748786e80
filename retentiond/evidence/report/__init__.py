"""The DPO report: its values (values), built (build) from the rule catalogue of the config
(catalogue) and the deletion logs (logs, entries), replayed into figures (replay) and turned into
tables and verdicts (tables, verdicts); residual copies (residual) and the forms (render: HTML,
PDF, CSV, JSON, rule catalogue). The `report` command is retentiond.cli.report."""
