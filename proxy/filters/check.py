"""The interface of a route's request checks: who may call it, decided before any upstream work.

Owns `RequestCheck`, what the route stage's authorization slot (`RouteStage.authorization`) holds, and
`AllChecks`, several checks that must all pass, in order. A check reads the request's stream (its head and
the caller's verified `peer_identity`) and may note what it learned on the request's record (the API
client's name); it answers None to let the request on or a local reply to refuse it. Implementations live
beside it in `proxy.filters` (`authz.AuthzCheck`, `apikey.ApiKeyCheck`).

Why here and not in `proxy.stages.route`: the checks are filters, and filters must not import the stages
(lint-imports); they see the stream and the record, the two things the stages hand down. A native base
class, not a Protocol: compiled, the route stage's call is a vtable call.
Must not do I/O: a check runs on the event loop for every request of its route.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.local_reply import LocalReply
    from proxy.stream import RequestStream
    from proxy.telemetry.record import RequestRecord


class RequestCheck:
    """A check of a request before any upstream work: None lets it on, a reply refuses it."""

    __slots__ = ()

    def check(self, stream: RequestStream, record: RequestRecord) -> LocalReply | None:
        raise NotImplementedError


class AllChecks(RequestCheck):
    """Checks that must all pass, in order; the first refusal answers (later checks do not run)."""

    __slots__ = ("checks",)

    def __init__(self, checks: Sequence[RequestCheck]) -> None:
        self.checks = tuple(checks)

    def check(self, stream: RequestStream, record: RequestRecord) -> LocalReply | None:
        for one in self.checks:
            reply = one.check(stream, record)
            if reply is not None:
                return reply
        return None


def all_of(checks: Sequence[RequestCheck]) -> RequestCheck | None:
    """The one check `checks` amount to: None for none (the slot stays empty), the check itself for one."""
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    return AllChecks(checks)
