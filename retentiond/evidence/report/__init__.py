"""The DPO report: figures from the deletion logs (data), residual copies (residual), the forms
(render: HTML, PDF, CSV, JSON, rule catalogue) and the `report` command (command)."""
