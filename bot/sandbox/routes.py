"""HTTP face of the sandbox: /cgi-bin/<path> as WeCom answers it (errcode JSON, HTTP 200), and a
control plane under /_sandbox/ to inspect state, change rules and play members."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bot.sandbox.auth import auth_router
from bot.sandbox.backend import WeComBackend
from bot.sandbox.errors import SandboxError


def qr_png(text: str, size: int = 29) -> bytes:
    """A small black-and-white PNG derived from `text`: a stand-in QR image, stable per config."""
    seed = zlib.crc32(text.encode())
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            finder = any(0 <= x - ox < 7 and 0 <= y - oy < 7 and (x - ox in (0, 6) or y - oy in (0, 6)
                         or (2 <= x - ox <= 4 and 2 <= y - oy <= 4)) for ox, oy in ((0, 0), (size - 7, 0), (0, size - 7)))
            bit = finder or ((seed >> ((x * 7 + y * 13) % 31)) ^ (x * y)) & 1
            row.append(0 if bit else 255)
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


async def _broken_body():
    yield b'{"errc'
    raise ConnectionResetError("sandbox: answer lost on purpose")


def create_sandbox_app(backend: WeComBackend, driver=None) -> FastAPI:
    app = FastAPI(title="WeCom sandbox", docs_url=None, redoc_url=None)
    app.state.backend = backend
    app.state.driver = driver
    app.include_router(auth_router(backend))   # WeCom login pages and their codes (bot/sandbox/auth.py)

    def wecom_json(payload: dict) -> Response:
        return Response(json.dumps(payload, ensure_ascii=False), media_type="application/json")

    @app.get("/cgi-bin/gettoken")
    async def gettoken(corpid: str = "", corpsecret: str = ""):
        try:
            return wecom_json(backend.gettoken(corpid, corpsecret))
        except SandboxError as e:
            return wecom_json(e.body())

    @app.api_route("/cgi-bin/{path:path}", methods=["GET", "POST"])
    async def cgi(path: str, request: Request):
        token = request.query_params.get("access_token")
        try:
            if path == "media/upload":
                form = await request.form()
                upload = form.get("media")
                if upload is None or isinstance(upload, str):
                    raise SandboxError(40058, "multipart field `media` is required")
                body = {"type": request.query_params.get("type"), "filename": upload.filename,
                        "data": await upload.read()}
            else:
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    raise SandboxError(47001) from None
                if not isinstance(body, dict):
                    raise SandboxError(47001)
                # GET endpoints (ticket/get?type=…) take their arguments in the query
                body = {**{k: v for k, v in request.query_params.items() if k != "access_token"}, **body}
            answer = wecom_json(backend.call(path, token, body))
            fault = backend.take_fault(path)
            if fault == "late":      # done, answered after the client's timeout
                await asyncio.sleep(backend.rules.late_answer_seconds)
            elif fault == "drop":    # done, and the connection breaks before the answer is out
                return StreamingResponse(_broken_body(), media_type="application/json")
            return answer
        except SandboxError as e:
            if e.errcode == 404:
                return JSONResponse({"errcode": 404, "errmsg": e.errmsg}, status_code=404)
            return wecom_json(e.body())

    # -- control plane --------------------------------------------------------------------
    @app.get("/_sandbox/state")
    def state():
        return wecom_json(backend.state())

    @app.post("/_sandbox/reset")
    def reset():
        backend.reset()
        return {"ok": True}

    @app.post("/_sandbox/rules")
    async def rules(request: Request):
        try:
            backend.rules.update(**(await request.json()))
        except (ValueError, TypeError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return backend.rules.as_dict()

    @app.post("/_sandbox/token/invalidate")
    def invalidate():
        backend.invalidate_tokens()
        return {"ok": True}

    @app.post("/_sandbox/inject")
    async def inject(request: Request):
        """{endpoint, errcode, times}: fail before doing anything; {endpoint, fault: drop|late, times}:
        do it, then lose the answer."""
        b = await request.json()
        try:
            if "fault" in b:
                backend.inject_fault(b["endpoint"], b["fault"], int(b.get("times", 1)))
            else:
                backend.inject(b["endpoint"], int(b["errcode"]), int(b.get("times", 1)))
        except (KeyError, ValueError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return {"ok": True}

    @app.post("/_sandbox/break")
    async def break_qr(request: Request):
        """{state, how: deleted | full | nobody | fix}"""
        b = await request.json()
        try:
            backend.break_qr(b["state"], b["how"])
        except SandboxError as e:
            return JSONResponse(e.body(), status_code=400)
        return {"ok": True}

    @app.get("/_sandbox/qr/{kind}/{config_id}.png")
    def qr(kind: str, config_id: str):
        ways = backend.join_ways if kind == "join" else backend.contact_ways
        if config_id not in ways:
            return Response(status_code=404)
        return Response(qr_png(f"{kind}:{config_id}"), media_type="image/png")

    @app.post("/_sandbox/groupmsg/confirm")
    async def groupmsg_confirm(request: Request):
        """The owner clerk taps 发送 on a mass message task: {msgid}."""
        b = await request.json()
        try:
            backend.confirm_groupmsg(b["msgid"])
        except SandboxError as e:
            return JSONResponse(e.body(), status_code=400)
        return {"ok": True}

    @app.post("/_sandbox/groupmsg/personal")
    async def groupmsg_personal(request: Request):
        """A clerk's own mass message from the client: {sender, chat_ids, text}."""
        b = await request.json()
        try:
            return {"msgid": backend.clerk_mass_send(b["sender"], list(b["chat_ids"]), b.get("text", "个人群发"))}
        except SandboxError as e:
            return JSONResponse(e.body(), status_code=400)

    @app.post("/_sandbox/members/add")
    async def members_add(request: Request):
        """Play customers adding a store's clerk (and joining its group): {state, count, join}."""
        if app.state.driver is None:
            return JSONResponse({"error": "no callback target: start the sandbox with --callback-url"}, 400)
        b = await request.json()
        from starlette.concurrency import run_in_threadpool
        results = await run_in_threadpool(app.state.driver.burst, [b["state"]] * int(b.get("count", 1)),
                                          join=bool(b.get("join", False)))
        return {"delivered": [r.summary() for r in results]}

    return app
