"""Roles, permissions, the policy file and the decision function."""

from stockade.access.policy import Decision, Policy, PolicyError, load_policy

__all__ = ["Decision", "Policy", "PolicyError", "load_policy"]
