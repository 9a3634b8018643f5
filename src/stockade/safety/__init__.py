"""Model safety: PII redaction into typed placeholders.

``stockade.safety.redaction`` contains the public interface: ``Redactor``, ``Redacted`` and
``restore``.
"""
