"""Dashboard sessions: a signed token in an HttpOnly, SameSite=Strict cookie, and CSRF tokens.

Signing in posts an API key once; the gateway checks it exactly as the API does and answers with a
cookie holding `key id . expiry . nonce` and their HMAC. The key itself is never stored, echoed or put in
a page. Each request looks the key id up among the active keys the gateway holds in memory, so a revoked
key ends its sessions within one catalog refresh. The signing key is derived from the audit key (the
secret kept outside the database, shared by replicas: OPSGATE_AUDIT_KEY or the data directory's
`audit.key`), under a label of its own.

CSRF: every form carries a token, the HMAC of the session's nonce (or, on the sign-in form, of a random
pre-session cookie's nonce); a POST without the matching token is refused. SameSite=Strict already keeps
other sites' forms from carrying the cookie; the token is the second lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session as DbSession

from gateway.db.models import UiSignOut
from gateway.keys import Principal
from gateway.registry import audit

COOKIE = "opsgate_ui"
LOGIN_COOKIE = "opsgate_ui_login"
COOKIE_PATH = "/ui"
LIFETIME_S = 8 * 3600
_LABEL = b"opsgate-ui-session-v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Session:
    key_id: str
    expires: int
    nonce: str


@dataclass
class SessionSigner:
    """Issues and checks session tokens and CSRF tokens; remembers sign-outs until their expiry, in the
    database when it has one (so every replica refuses a signed-out session) and in memory."""

    secret: bytes
    engine: Engine | None = None
    signed_out: dict[str, int] = field(default_factory=dict)  # nonce -> expiry (this replica)

    @classmethod
    def for_data_dir(cls, data_dir: Path, engine: Engine | None = None) -> SessionSigner:
        return cls(hmac.new(audit.load_key(data_dir), _LABEL, hashlib.sha256).digest(), engine)

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self.secret, text.encode("utf-8"), hashlib.sha256).digest())

    def issue(self, principal: Principal, *, now: float | None = None) -> str:
        expires = int((now or time.time()) + LIFETIME_S)
        body = f"{principal.key_id}.{expires}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session:' + body)}"

    def check(self, token: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie holds, or None when it is absent, forged, expired or signed out."""
        if not token or len(token) > 300:
            return None
        body, _, mac = token.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac("session:" + body)):
            return None
        key_id, expires, nonce = body.split(".", 2)
        if not expires.isdigit() or int(expires) < (now or time.time()) or nonce in self.signed_out:
            return None
        if self.engine is not None:  # signed out on another replica?
            with DbSession(self.engine) as db:
                if db.get(UiSignOut, _nonce_hash(nonce)) is not None:
                    self.signed_out[nonce] = int(expires)
                    return None
        return Session(key_id, int(expires), nonce)

    def sign_out(self, session: Session) -> None:
        now = time.time()
        self.signed_out = {n: e for n, e in self.signed_out.items() if e >= now}
        self.signed_out[session.nonce] = session.expires
        if self.engine is not None:
            with DbSession(self.engine) as db, db.begin():
                db.execute(delete(UiSignOut).where(UiSignOut.expires < int(now)))
                if db.get(UiSignOut, _nonce_hash(session.nonce)) is None:
                    db.add(UiSignOut(nonce_hash=_nonce_hash(session.nonce), expires=session.expires))

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf:" + nonce)

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce and token) and hmac.compare_digest(self.csrf(nonce or ""), token or "")


def _nonce_hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8")).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(16)
