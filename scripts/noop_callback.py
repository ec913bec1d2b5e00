"""The decrypt-only reference for the callback benchmark (issue 16): what any WeCom callback endpoint
must do at the least, and nothing more.

    python scripts/noop_callback.py [--config config.yaml] [--host 127.0.0.1] [--port 8001]
    WECOM_BOT_CONFIG=config.yaml uvicorn --factory scripts.noop_callback:app_from_env --port 8001

POST /wecom/callback verifies the signature and decrypts with wechatpy's WeChatCrypto, parses the
payload with wechatpy's parser, and answers 200 "success"; a bad signature gets 403. It reads the
bot's own config (wecom.token, wecom.encoding_aes_key, wecom.corp_id, as `load_settings` does, file
and WECOM_BOT_ variables), runs on FastAPI under uvicorn with `serve`'s server options, and stores
nothing: the bot's rate against it is the cost of storing a callback durably.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from xml.parsers.expat import ExpatError

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.work import parse_message
from wechatpy.work.crypto import WeChatCrypto
from wechatpy.work.exceptions import InvalidCorpIdException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import CONFIG_ENV, Settings, load_settings  # noqa: E402


def create_app(settings: Settings) -> FastAPI:
    w = settings.wecom
    crypto = WeChatCrypto(w.token.get_secret_value(), w.encoding_aes_key.get_secret_value(), w.corp_id)
    app = FastAPI(title="noop-callback", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/wecom/callback")
    async def callback(request: Request, msg_signature: str = "", timestamp: str = "", nonce: str = ""):
        body = await request.body()
        try:
            xml = crypto.decrypt_message(body, msg_signature, timestamp, nonce)
        except (InvalidSignatureException, InvalidCorpIdException):
            return PlainTextResponse("bad signature or corp id", status_code=403)
        except (ExpatError, KeyError, TypeError, ValueError):
            return PlainTextResponse("not a WeCom callback", status_code=400)
        parse_message(xml)
        return PlainTextResponse("success")

    @app.get("/livez")
    def livez():
        return {"status": "alive"}

    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory`: the config of $WECOM_BOT_CONFIG, else ./config.yaml."""
    return create_app(load_settings(os.environ.get(CONFIG_ENV) or "config.yaml"))


def main() -> None:
    import uvicorn

    from bot.web import server_options

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.environ.get(CONFIG_ENV) or "config.yaml")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    a = ap.parse_args()
    settings = load_settings(a.config)
    uvicorn.run(create_app(settings), host=a.host, port=a.port, log_level="warning", access_log=False,
                **server_options(settings))


if __name__ == "__main__":
    main()
