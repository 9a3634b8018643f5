"""The audit trail and structured logs."""
