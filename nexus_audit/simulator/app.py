"""The aiohttp.web application that speaks CloudNexus v2, plus the ``/_sim`` admin routes.

One middleware does what every request shares, in this order: request id, auth, rate
limit, latency, faults; then it renders every error in the API's error format, adds the
``X-RateLimit-*`` and ``X-Request-Id`` headers, and logs the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from aiohttp import web

from .clock import wall_seconds
from .cursor import InvalidCursorError, Pager, filter_hash, make_page_with
from .errors import UNAUTHORIZED_MESSAGE, ErrorCode, SimError, validation_error
from .faults import BODY_FAULTS, Fault, FaultKind, mangle_body, mangle_payload
from .fleet import Bucket, Instance
from .multipart import parse_part_list, parse_part_number
from .ratelimit import RateDecision
from .requestlog import RequestRecord
from .state import Account, SimState
from .validation import (
    MAX_LIMIT,
    ListQuery,
    parse_cursor,
    parse_instance_query,
    parse_json_object,
    parse_limit,
    parse_new_instance,
    parse_object_metadata,
)

API_PREFIX = "/v2"
ADMIN_PREFIX = "/_sim/"
STATE_KEY = web.AppKey("sim_state", SimState)
_REQUEST_ID = web.RequestKey("sim_request_id", str)
_RATE = web.RequestKey("sim_rate", RateDecision)
_FAULT = web.RequestKey("sim_fault", Fault)
_ACCOUNT = web.RequestKey("sim_account", Account)  # the account of the request's key

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Listable(Protocol):
    @property
    def id(self) -> str: ...

    def to_json(self) -> dict[str, object]: ...


_L = TypeVar("_L", bound=_Listable)


class _InjectedResetError(Exception):
    """Raised after the transport was aborted on purpose (the RESET fault)."""


def new_request_id() -> str:
    """``req_`` + 10 hex digits."""
    return "req_" + secrets.token_hex(5)


def build_app(state: SimState) -> web.Application:
    """The simulator application over ``state``."""
    api = _Api(state)
    app = web.Application(
        middlewares=[api.middleware],
        client_max_size=state.config.max_object_bytes,
    )
    app[STATE_KEY] = state
    r = app.router
    r.add_get(f"{API_PREFIX}/instances", api.list_instances, allow_head=False)
    r.add_post(f"{API_PREFIX}/instances", api.create_instance)
    r.add_delete(f"{API_PREFIX}/instances/{{instance_id}}", api.delete_instance)
    r.add_get(f"{API_PREFIX}/buckets", api.list_buckets, allow_head=False)
    r.add_put(f"{API_PREFIX}/objects/{{bucket}}/{{key:.+}}", api.put_object)
    r.add_post(f"{API_PREFIX}/objects/{{bucket}}/{{key:.+}}", api.post_object)
    r.add_delete(f"{API_PREFIX}/objects/{{bucket}}/{{key:.+}}", api.abort_upload)
    r.add_get("/_sim/requests", api.admin_requests, allow_head=False)
    r.add_post("/_sim/churn", api.admin_churn)
    r.add_post("/_sim/buckets/{bucket}/access", api.admin_bucket_access)
    r.add_post("/_sim/faults", api.admin_faults)
    return app


def _error_response(exc: SimError, request_id: str) -> web.Response:
    return web.json_response(exc.body(request_id), status=exc.status, headers=exc.headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> SimError:
    """Translate aiohttp's routing/body errors into our error vocabulary."""
    if exc.status == 404:
        return SimError(404, ErrorCode.NOT_FOUND, f"No route for {request.method} {request.path}")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return SimError(
            405,
            ErrorCode.METHOD_NOT_ALLOWED,
            f"Method {request.method} is not allowed for {request.path}",
            {"Allow": allowed},
        )
    if exc.status == 413:
        return SimError(413, ErrorCode.PAYLOAD_TOO_LARGE, "Request body is too large")
    if exc.status >= 500:
        return SimError(500, ErrorCode.INTERNAL_ERROR, "Internal server error")
    return SimError(exc.status, ErrorCode.VALIDATION_ERROR, exc.reason)


class _Api:
    """Request handlers and the shared middleware, bound to one SimState."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    # -- middleware ------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Auth, rate limit, latency, faults, error format, headers and the request log."""
        request_id = new_request_id()
        request[_REQUEST_ID] = request_id
        admin = request.path.startswith(ADMIN_PREFIX)
        key_id = self.state.keys.authenticate(
            request.headers.get("Authorization"), allow_revoked=admin
        )
        status: int | None = None
        try:
            try:
                if key_id is None:
                    raise SimError(401, ErrorCode.UNAUTHORIZED, UNAUTHORIZED_MESSAGE)
                request[_ACCOUNT] = self.state.account(key_id)
                if admin:
                    response = await handler(request)
                else:
                    response = await self._api_request(request, handler, key_id)
            except SimError as exc:
                response = _error_response(exc, request_id)
            except web.HTTPException as exc:
                response = _error_response(_from_http_exception(request, exc), request_id)
            except _InjectedResetError:
                # The transport is gone; aiohttp drops this response quietly when it
                # fails to write it. The log shows status None for the reset.
                return web.Response(status=500)
            except Exception:
                # Never a traceback in the body: log it here, answer in the error format.
                log.exception("simulator: unexpected error in %s %s", request.method, request.path)
                error = SimError(500, ErrorCode.INTERNAL_ERROR, "Internal server error")
                response = _error_response(error, request_id)
            decision = request.get(_RATE)
            if decision is not None:
                response.headers.update(decision.headers())
            response.headers["X-Request-Id"] = request_id
            status = response.status
            return response
        finally:
            if not admin:
                self.state.request_log.append(
                    RequestRecord(
                        time=wall_seconds(self.state.clock),
                        method=request.method,
                        path=request.path,
                        query=request.query_string,
                        status=status,
                        key_id=key_id,
                        request_id=request_id,
                    )
                )

    async def _api_request(
        self, request: web.Request, handler: Handler, key_id: str
    ) -> web.StreamResponse:
        state = self.state
        now = wall_seconds(state.clock)
        decision = state.limiter.peek(key_id, now)
        request[_RATE] = decision
        if decision.remaining <= 0:
            raise SimError(
                429,
                ErrorCode.RATE_LIMITED,
                f"Rate limit of {decision.limit} requests exceeded; retry after the reset",
                {"Retry-After": str(decision.retry_after)},
            )
        fault = state.faults.pick(request.method, request.path)
        if fault is not None and fault.kind is FaultKind.HTTP_429:
            # A spurious 429: the real headers, and the request costs nothing.
            raise SimError(
                429,
                ErrorCode.RATE_LIMITED,
                "Too many requests",
                {"Retry-After": str(fault.retry_after)},
            )
        request[_RATE] = state.limiter.acquire(key_id, now)
        await self._latency()
        if fault is not None:
            await self._apply_fault(request, fault, key_id)
        return await handler(request)

    async def _latency(self) -> None:
        cfg = self.state.config
        delay = cfg.latency
        if cfg.latency_jitter:
            delay += self.state.latency_rng.uniform(0, cfg.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _apply_fault(self, request: web.Request, fault: Fault, key_id: str) -> None:
        kind = fault.kind
        if kind is FaultKind.RESET:
            if request.transport is not None:
                request.transport.abort()
            raise _InjectedResetError
        if kind is FaultKind.SLOW:
            await fault.hold()
            return
        if kind in BODY_FAULTS:
            request[_FAULT] = fault
            return
        errors = {
            FaultKind.HTTP_500: SimError(500, ErrorCode.INTERNAL_ERROR, "Internal server error"),
            FaultKind.HTTP_502: SimError(502, ErrorCode.BAD_GATEWAY, "Bad gateway"),
            FaultKind.HTTP_503: SimError(
                503, ErrorCode.SERVICE_UNAVAILABLE, "Service temporarily unavailable"
            ),
            FaultKind.HTTP_403: SimError(
                403, ErrorCode.FORBIDDEN, "Insufficient permissions for this request"
            ),
            FaultKind.INVALID_CURSOR: SimError(
                400, ErrorCode.INVALID_CURSOR, "Cursor is invalid or has expired"
            ),
        }
        if kind is FaultKind.REVOKE_KEY:
            self.state.keys.revoke_id(key_id)
            raise SimError(401, ErrorCode.UNAUTHORIZED, UNAUTHORIZED_MESSAGE)
        raise errors[kind]

    def _json(
        self, request: web.Request, payload: dict[str, object], status: int = 200
    ) -> web.Response:
        """A JSON response, with this request's body fault (if any) applied."""
        fault = request.get(_FAULT)
        if fault is not None:
            payload = mangle_payload(fault.kind, payload)
        body = json.dumps(payload).encode()
        if fault is not None:
            body = mangle_body(fault.kind, body)
        return web.Response(body=body, status=status, content_type="application/json")

    # -- API handlers ----------------------------------------------------------------

    async def list_instances(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/instances``: filtered, keyset-paged, signed cursors."""
        query = parse_instance_query(request.query)
        fleet = request[_ACCOUNT].fleet

        def pager(after: str | None, limit: int) -> tuple[list[Instance], bool, int]:
            return fleet.page_instances(
                region=query.region, status=query.status, tags=query.tags,
                after=after, limit=limit,
            )

        return self._page_response(request, "instances", pager, query)

    async def create_instance(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/instances``: 201 with the new (pending) instance."""
        new = parse_new_instance(await request.read())
        inst = request[_ACCOUNT].fleet.add_instance(
            name=new.name,
            plan=new.plan,
            region=new.region,
            image_id=new.image_id,
            ssh_keys=new.ssh_keys,
            tags=new.tags,
        )
        return self._json(request, inst.to_json(), status=201)

    async def delete_instance(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v2/instances/{id}``: 204 without a body; 404 if unknown."""
        instance_id = request.match_info["instance_id"]
        try:
            request[_ACCOUNT].fleet.delete_instance(instance_id)
        except KeyError:
            raise SimError(
                404, ErrorCode.RESOURCE_NOT_FOUND, f"Instance {instance_id} does not exist"
            ) from None
        return web.Response(status=204)

    async def list_buckets(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/buckets``: all at once, or paged when ``bucket_page_size`` > 0."""
        fleet = request[_ACCOUNT].fleet
        page_size = self.state.config.bucket_page_size
        if page_size <= 0:
            return self._json(request, {"buckets": [b.to_json() for b in fleet.query_buckets()]})
        query = ListQuery(
            limit=parse_limit(
                request.query.get("limit"),
                default=page_size,
                maximum=max(MAX_LIMIT, page_size),
            ),
            cursor=parse_cursor(request.query),
        )

        def pager(after: str | None, limit: int) -> tuple[list[Bucket], bool, int]:
            return fleet.page_buckets(after=after, limit=limit)

        return self._page_response(request, "buckets", pager, query)

    def _page_response(
        self,
        request: web.Request,
        kind: str,
        pager: Pager[_L],
        query: ListQuery,
    ) -> web.Response:
        try:
            page = make_page_with(
                pager,
                key=lambda item: item.id,
                codec=self.state.codec,
                # A cursor is good for the account whose key got it, no other.
                fhash=filter_hash(f"{kind}@{request[_ACCOUNT].index}", query.filters()),
                cursor=query.cursor,
                limit=query.limit,
                now=wall_seconds(self.state.clock),
            )
        except InvalidCursorError as exc:
            raise SimError(400, ErrorCode.INVALID_CURSOR, f"Invalid cursor: {exc}") from None
        payload: dict[str, object] = {
            kind: [item.to_json() for item in page.items],
            "pagination": {"next_cursor": page.next_cursor, "total": page.total},
        }
        return self._json(request, payload)

    async def put_object(self, request: web.Request) -> web.StreamResponse:
        """``PUT /v2/objects/{bucket}/{key}``: store the body; ETag and content hash."""
        bucket, key = request.match_info["bucket"], request.match_info["key"]
        if "upload_id" in request.query:
            return await self._put_part(request, bucket, key)
        account = request[_ACCOUNT]
        if account.fleet.get_bucket(bucket) is None:
            raise SimError(404, ErrorCode.RESOURCE_NOT_FOUND, f"Bucket {bucket} does not exist")
        metadata = parse_object_metadata(request.headers.get("X-Object-Metadata"))
        data = await request.read()
        obj, replaced = account.objects.put(
            bucket,
            key,
            data,
            metadata=metadata,
            content_type=request.content_type,
            now=wall_seconds(self.state.clock),
        )
        account.fleet.add_bucket_bytes(bucket, obj.size - replaced)
        response = self._json(
            request,
            {
                "bucket": bucket,
                "key": key,
                "size": obj.size,
                "etag": obj.etag,
                "content_hash": obj.content_hash,
            },
        )
        response.headers["ETag"] = f'"{obj.etag}"'
        return response

    # -- multipart uploads (the rules live in multipart.py) ------------------------------

    async def post_object(self, request: web.Request) -> web.StreamResponse:
        """``POST ...?uploads`` starts a multipart upload; ``?upload_id=U&complete`` ends it."""
        bucket, key = request.match_info["bucket"], request.match_info["key"]
        query, account = request.query, request[_ACCOUNT]
        if "uploads" in query:
            if account.fleet.get_bucket(bucket) is None:
                raise SimError(
                    404, ErrorCode.RESOURCE_NOT_FOUND, f"Bucket {bucket} does not exist"
                )
            upload = account.uploads.start(
                bucket,
                key,
                metadata=parse_object_metadata(request.headers.get("X-Object-Metadata")),
                content_type=request.content_type,
                now=wall_seconds(self.state.clock),
            )
            return self._json(
                request, {"bucket": bucket, "key": key, "upload_id": upload.upload_id}
            )
        if "complete" in query and query.get("upload_id"):
            listed = parse_part_list(await request.read())
            if account.fleet.get_bucket(bucket) is None:
                raise SimError(
                    404, ErrorCode.RESOURCE_NOT_FOUND, f"Bucket {bucket} does not exist"
                )
            done = account.uploads.complete(
                query["upload_id"],
                bucket,
                key,
                listed,
                objects=account.objects,
                now=wall_seconds(self.state.clock),
            )
            if not done.repeat:
                account.fleet.add_bucket_bytes(bucket, done.obj.size - done.replaced)
            response = self._json(
                request,
                {
                    "bucket": bucket,
                    "key": key,
                    "size": done.obj.size,
                    "etag": done.obj.etag,
                    "content_hash": done.obj.content_hash,
                    "parts": done.parts,
                },
            )
            response.headers["ETag"] = f'"{done.obj.etag}"'
            return response
        raise validation_error(
            "POST on an object takes ?uploads (start a multipart upload) "
            "or ?upload_id=<id>&complete (complete it)"
        )

    async def _put_part(self, request: web.Request, bucket: str, key: str) -> web.Response:
        """``PUT ...?upload_id=U&part=N``: store one part."""
        upload_id = request.query["upload_id"]
        number = parse_part_number(request.query.get("part"))
        part = request[_ACCOUNT].uploads.put_part(
            upload_id, bucket, key, number, await request.read())
        response = self._json(
            request,
            {
                "upload_id": upload_id,
                "part": number,
                "size": len(part.data),
                "etag": part.etag,
                "content_hash": part.content_hash,
            },
        )
        response.headers["ETag"] = f'"{part.etag}"'
        return response

    async def abort_upload(self, request: web.Request) -> web.StreamResponse:
        """``DELETE ...?upload_id=U``: abort a multipart upload (objects are not deleted)."""
        bucket, key = request.match_info["bucket"], request.match_info["key"]
        upload_id = request.query.get("upload_id")
        if not upload_id:
            raise validation_error("DELETE on an object takes ?upload_id=<id> (abort an upload)")
        request[_ACCOUNT].uploads.abort(upload_id, bucket, key)
        return self._json(request, {"upload_id": upload_id, "aborted": True})

    # -- admin handlers --------------------------------------------------------------

    async def admin_requests(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/requests``: the request log."""
        records = [r.to_json() for r in self.state.request_log.records()]
        return web.json_response({"requests": records})

    async def admin_churn(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/churn``: one churn step; returns its events."""
        events = request[_ACCOUNT].fleet.churn_step()
        return web.json_response(
            {"events": [{"kind": e.kind, "id": e.resource_id, "detail": e.detail} for e in events]}
        )

    async def admin_bucket_access(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/buckets/{id}/access`` with ``{"access": "public"}``."""
        bucket = request.match_info["bucket"]
        body = parse_json_object(await request.read())
        access = body.get("access")
        if not isinstance(access, str) or not access:
            raise validation_error("Field 'access' must be a non-empty string")
        try:
            request[_ACCOUNT].fleet.set_bucket_access(bucket, access)
        except KeyError:
            raise SimError(
                404, ErrorCode.RESOURCE_NOT_FOUND, f"Bucket {bucket} does not exist"
            ) from None
        found = request[_ACCOUNT].fleet.get_bucket(bucket)
        return web.json_response(found.to_json() if found else {})

    async def admin_faults(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/faults`` with a scripted fault, e.g. ``{"kind": "500", "times": 2}``."""
        body = parse_json_object(await request.read())
        try:
            scripted = self.state.faults.script_from_json(body)
        except ValueError as exc:
            raise validation_error(str(exc)) from None
        fault = {"kind": str(scripted.kind), "path": scripted.path, "method": scripted.method,
                 "times": scripted.times, "after": scripted.after}
        return web.json_response({"fault": fault}, status=201)
