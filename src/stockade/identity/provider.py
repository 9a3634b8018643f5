"""The OAuth 2.0 / OpenID Connect protocol logic, free of HTTP details.

Only the authorization code grant with PKCE S256 is offered (RFC 9700 section 2.1.1),
redirect URIs match exactly (RFC 9700 section 4.1.3), and refresh tokens rotate at every
use with reuse detection (RFC 9700 section 4.14.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import structlog
from sqlalchemy import Connection

from stockade.config import Settings
from stockade.db import Database, Scope, scoped_transaction
from stockade.errors import OAuthError
from stockade.identity import binding, sessions, store
from stockade.identity.dpop import ProofVerifier, ReplayCache
from stockade.identity.store import Client, Grant, User
from stockade.identity.tokens import InvalidToken, TokenService

log = structlog.get_logger(__name__)

SUPPORTED_SCOPES = frozenset({"openid", "email", "offline_access"})
# RFC 7636 section 4.1: 43 to 128 unreserved characters.
_PKCE_VALUE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


class AuthorizationRequestError(Exception):
    """An authorization request error. ``redirect`` is None when the client or its
    redirect URI is not trusted, and the error must be shown to the user instead
    (RFC 6749 section 4.1.2.1)."""

    def __init__(self, error: str, description: str, redirect: str | None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.redirect = redirect


@dataclass(frozen=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    scope: str
    state: str | None
    nonce: str | None
    code_challenge: str
    prompt: str | None

    def query(self) -> str:
        """Return the request as a query string, to come back to after sign-in."""
        params = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        if self.state is not None:
            params["state"] = self.state
        if self.nonce is not None:
            params["nonce"] = self.nonce
        return urlencode(params)


@dataclass(frozen=True)
class _Rotation:
    """The refresh token stored for a grant, with the user's roles and record at that time."""

    refresh_token: str
    roles: list[str]
    user: User | None
    live: bool = True


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Provider:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        tokens: TokenService,
        proofs: ProofVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.tokens = tokens
        self.proofs = proofs or ProofVerifier(settings.issuer, ReplayCache(db.app))

    # Authorization endpoint

    def parse_authorization_request(self, params: dict[str, str]) -> AuthorizationRequest:
        client = store.find_client(self.db.app, params.get("client_id", ""))
        if client is None:
            raise AuthorizationRequestError("invalid_client", "unknown client_id", None)
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise AuthorizationRequestError(
                "invalid_request", "redirect_uri does not exactly match a registered URI", None
            )

        state = params.get("state")

        def fail(error: str, description: str) -> AuthorizationRequestError:
            return AuthorizationRequestError(
                error,
                description,
                self.client_redirect(
                    redirect_uri, error=error, state=state, error_description=description
                ),
            )

        if params.get("response_type") != "code":
            raise fail("unsupported_response_type", "only response_type=code is supported")
        if params.get("code_challenge_method") != "S256":
            raise fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
        challenge = params.get("code_challenge", "")
        if not _PKCE_VALUE.match(challenge):
            raise fail("invalid_request", "code_challenge is missing or malformed")
        scope = params.get("scope") or "openid"
        if not set(scope.split()) <= SUPPORTED_SCOPES:
            raise fail("invalid_scope", f"supported scopes: {' '.join(sorted(SUPPORTED_SCOPES))}")
        prompt = params.get("prompt")
        if prompt not in (None, "none", "login", "consent", "select_account"):
            raise fail("invalid_request", "prompt must be none, login, consent or select_account")
        return AuthorizationRequest(
            client=client,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=params.get("nonce"),
            code_challenge=challenge,
            prompt=prompt,
        )

    def issue_code(
        self,
        request: AuthorizationRequest,
        *,
        user_id: uuid.UUID,
        tenant_id: uuid.UUID,
        amr: tuple[str, ...],
        authenticated_at: datetime,
        browser_session: bytes | None,
    ) -> str:
        """Store a one-time code for the chosen tenant and return the client redirect."""
        code = store.new_tenant_token(tenant_id)
        grant = Grant(
            tenant_id=tenant_id,
            user_id=user_id,
            client_id=request.client.client_id,
            scope=request.scope,
            amr=amr,
            authenticated_at=authenticated_at,
            redirect_uri=request.redirect_uri,
            nonce=request.nonce,
            code_challenge=request.code_challenge,
            browser_session=browser_session,
        )
        scope = Scope(tenant_id=tenant_id, user_id=user_id)
        with scoped_transaction(self.db.app, scope) as conn:
            store.store_code(conn, code, grant, self.settings.authorization_code_seconds)
        return self.client_redirect(request.redirect_uri, code=code, state=request.state)

    def client_redirect(self, uri: str, **params: str | None) -> str:
        """Build the redirect to the client with ``params`` and the issuer."""
        # RFC 9207: the iss parameter lets the client detect a mix-up of providers.
        values = {key: value for key, value in params.items() if value is not None}
        values["iss"] = self.settings.issuer
        separator = "&" if "?" in uri else "?"
        return f"{uri}{separator}{urlencode(values)}"

    # Token endpoint

    def authenticate_client(self, form: dict[str, str], basic: tuple[str, str] | None) -> Client:
        """Authenticate a confidential client by its secret, or identify a public one."""
        if basic is not None:
            client_id, secret = basic
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = store.find_client(self.db.app, client_id) if client_id else None
        if client is None:
            raise _invalid_client("unknown client", basic)
        if client.is_public:
            if secret:
                raise _invalid_client("public clients have no secret", basic)
            return client
        presented = secret_digest(secret)
        # Compare digests in constant time; an absent secret compares against nothing.
        if not secret or not hmac.compare_digest(presented, client.secret_hash or b""):
            raise _invalid_client("client authentication failed", basic)
        return client

    def verify_dpop(self, proof: str | None) -> str | None:
        """Check the token request's DPoP proof, if any, and return its key's thumbprint."""
        return binding.proof_thumbprint(self.proofs, proof)

    def exchange_code(
        self, form: dict[str, str], client: Client, dpop_jkt: str | None = None
    ) -> dict[str, Any]:
        """Redeem a code for tokens.

        With ``dpop_jkt`` the access token is bound to that DPoP key, and so is the refresh
        token family of a public client (RFC 9449 section 5).
        """
        code = form.get("code", "")
        verifier = form.get("code_verifier", "")
        tenant_id = store.tenant_of_token(code)
        if tenant_id is None:
            raise OAuthError("invalid_grant", "the authorization code is invalid or expired")
        if not _PKCE_VALUE.match(verifier):
            raise OAuthError("invalid_grant", "code_verifier is missing or malformed")

        family_id = uuid.uuid4()
        problem = None
        rotation = None
        with scoped_transaction(self.db.app, Scope(tenant_id=tenant_id)) as conn:
            # Rejected before the code is used, so the client may retry with a proof.
            binding.require_proof_if_tenant_requires(conn, tenant_id, dpop_jkt)
            grant = store.consume_code(conn, code, family_id)
            if grant is None:
                # RFC 6749 section 4.1.2: a code used twice revokes what it issued.
                earlier = store.family_of_used_code(conn, code)
                if earlier is not None:
                    store.revoke_family(conn, earlier)
                    log.warning("authorization_code_reused", tenant_id=str(tenant_id))
            else:
                problem = _code_mismatch(grant, client, form.get("redirect_uri", ""), verifier)
                if problem is None:
                    rotation = self._rotate(conn, grant, binding.family_key(client, dpop_jkt))
        if grant is None:
            raise OAuthError("invalid_grant", "the authorization code is invalid or expired")

        if problem:
            raise OAuthError("invalid_grant", problem)
        return self._issue(grant, rotation, include_id_token=True, dpop_jkt=dpop_jkt)

    def refresh(
        self, form: dict[str, str], client: Client, dpop_jkt: str | None = None
    ) -> dict[str, Any]:
        """Rotate a refresh token and issue a new access token.

        A family bound to a DPoP key needs a proof from that key. The check runs before the
        token is used, so a rejected refresh leaves the token usable.
        """
        token = form.get("refresh_token", "")
        tenant_id = store.tenant_of_token(token)
        if tenant_id is None:
            raise OAuthError("invalid_grant", "the refresh token is invalid")

        requested = form.get("scope")
        reused = False
        rotation = None
        with scoped_transaction(self.db.app, Scope(tenant_id=tenant_id)) as conn:
            binding.require_proof_if_tenant_requires(conn, tenant_id, dpop_jkt)
            grant = store.use_refresh_token(conn, token)
            if grant is None or grant.client_id != client.client_id:
                family = store.refresh_token_family(conn, token)
                if family is not None:
                    store.revoke_family(conn, family[0])
                    # A used token presented again is reuse; a revoked or expired one is not.
                    reused = grant is None and family[2]
            elif not requested or set(requested.split()) <= set(grant.scope.split()):
                # Raising here rolls the transaction back, so the token stays unused.
                binding.check_family_key(conn, grant, dpop_jkt)
                rotation = self._rotate(conn, grant, binding.family_key(client, dpop_jkt))
        if reused:
            log.warning(
                "refresh_token_reused", tenant_id=str(tenant_id), client_id=client.client_id
            )
            raise OAuthError(
                "invalid_grant", "the refresh token was already used; its token family is revoked"
            )
        if grant is None or grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked")

        if rotation is None:
            raise OAuthError("invalid_scope", "a refresh may not widen the granted scope")
        return self._issue(grant, rotation, include_id_token=False, dpop_jkt=dpop_jkt)

    def _rotate(self, conn: Connection, grant: Grant, family_key: str | None) -> _Rotation:
        """Store the next refresh token of the grant's family if the user is still a member.

        Callers run this in the transaction that used the code or refresh token. That row
        stays locked until the new token is committed, so a concurrent reuse waits and its
        family revocation then covers the new token as well. ``family_key`` binds the
        family's refresh tokens to a DPoP key unless they are bound already.
        """
        assert grant.family_id is not None
        refresh_token = store.new_tenant_token(grant.tenant_id)
        if grant.from_code:
            sessions.open_family(
                conn,
                family_id=grant.family_id,
                tenant_id=grant.tenant_id,
                user_id=grant.user_id,
                client_id=grant.client_id,
                browser_session=grant.browser_session,
                dpop_jkt=family_key,
            )
        elif not sessions.family_is_live(conn, grant.family_id, grant.user_id):
            return _Rotation(refresh_token, [], None, live=False)
        elif family_key is not None:
            sessions.bind_family(conn, grant.family_id, family_key)
        roles = store.roles_in_tenant(conn, grant.tenant_id, grant.user_id)
        user = store.find_user(conn, grant.user_id)
        if roles and user is not None:
            store.store_refresh_token(conn, refresh_token, grant, self.settings.refresh_token_days)
        return _Rotation(refresh_token, roles, user)

    def _issue(
        self,
        grant: Grant,
        rotation: _Rotation | None,
        *,
        include_id_token: bool,
        dpop_jkt: str | None,
    ) -> dict[str, Any]:
        """Mint an access token, and an ID token when asked, next to the rotated refresh token."""
        assert rotation is not None
        assert grant.family_id is not None
        refresh_token, roles, user = rotation.refresh_token, rotation.roles, rotation.user
        if not rotation.live:
            raise OAuthError("invalid_grant", "the session was signed out or the user disabled")
        if not roles or user is None:
            raise OAuthError("invalid_grant", "the user is no longer a member of this tenant")

        auth_time = int(grant.authenticated_at.timestamp())
        access_token, lifetime = self.tokens.issue_access_token(
            user_id=grant.user_id,
            tenant_id=grant.tenant_id,
            roles=roles,
            client_id=grant.client_id,
            scope=grant.scope,
            amr=list(grant.amr),
            auth_time=auth_time,
            family_id=grant.family_id,
            dpop_jkt=dpop_jkt,
        )
        response: dict[str, Any] = {
            "access_token": access_token,
            # RFC 9449 section 5: a bound access token has the token type DPoP.
            "token_type": "DPoP" if dpop_jkt else "Bearer",
            "expires_in": lifetime,
            "refresh_token": refresh_token,
            "scope": grant.scope,
        }
        if include_id_token and "openid" in grant.scope.split():
            response["id_token"] = self.tokens.issue_id_token(
                user_id=grant.user_id,
                client_id=grant.client_id,
                nonce=grant.nonce,
                auth_time=auth_time,
                amr=list(grant.amr),
                tenant_id=grant.tenant_id,
                email=user.email if "email" in grant.scope.split() else None,
            )
        log.info(
            "tokens_issued",
            tenant_id=str(grant.tenant_id),
            client_id=grant.client_id,
            family_id=str(grant.family_id),
            dpop_bound=dpop_jkt is not None,
        )
        return response

    # Revocation endpoint

    def revoke(self, token: str, client: Client) -> None:
        """Revoke the family of a refresh or access token (RFC 7009).

        Either kind ends the whole family: its refresh tokens stop at once, and its access
        tokens are refused on their next request. Unknown, expired or foreign tokens are
        ignored, as RFC 7009 section 2.2 requires.
        """
        if token.count(".") == 2:
            self._revoke_access_token(token, client)
            return
        tenant_id = store.tenant_of_token(token)
        if tenant_id is None:
            return
        with scoped_transaction(self.db.app, Scope(tenant_id=tenant_id)) as conn:
            family = store.refresh_token_family(conn, token)
            if family is not None and family[1] == client.client_id:
                store.revoke_family(conn, family[0])

    def _revoke_access_token(self, token: str, client: Client) -> None:
        try:
            principal = self.tokens.verify_access_token(token)
        except InvalidToken:
            return
        if principal.client_id != client.client_id or principal.family_id is None:
            return
        with scoped_transaction(self.db.app, Scope(tenant_id=principal.tenant_id)) as conn:
            store.revoke_family(conn, principal.family_id)


def _code_mismatch(grant: Grant, client: Client, redirect_uri: str, verifier: str) -> str | None:
    """Deny unless every binding of the code matches; return the first failure."""
    if grant.client_id != client.client_id:
        return "the code was issued to another client"
    if grant.redirect_uri != redirect_uri:
        return "redirect_uri differs from the authorization request"
    challenge = grant.code_challenge or ""
    if not hmac.compare_digest(s256(verifier).encode(), challenge.encode()):
        return "code_verifier does not match the code_challenge"
    return None


def _invalid_client(description: str, basic: tuple[str, str] | None) -> OAuthError:
    # RFC 6749 section 5.2: 401 with a challenge when the client tried HTTP Basic.
    headers = {"WWW-Authenticate": 'Basic realm="stockade"'} if basic else {}
    return OAuthError("invalid_client", description, status=401, headers=headers)


def now_utc() -> datetime:
    return datetime.now(UTC)
