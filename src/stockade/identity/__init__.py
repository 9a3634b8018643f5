"""The OpenID Connect provider: sign-in, passwords, tokens and clients."""
