"""The OpenAI-compatible model gateway: budgets, providers, fallback, cache, redaction."""
