"""`wecom-bot sandbox`: the simulator alone, with the corp of config.yaml, for trying `serve`."""

from __future__ import annotations

import uvicorn

from bot.clock import SystemClock
from bot.config import Settings
from bot.sandbox.backend import Corp, WeComBackend
from bot.sandbox.driver import Driver
from bot.sandbox.routes import create_sandbox_app
from bot.sandbox.seed import seed_stores


def run_sandbox(settings: Settings, *, host: str, port: int, callback_url: str) -> int:
    w = settings.wecom
    corp = Corp(w.corp_id, w.secret.get_secret_value(), w.agent_id, w.token.get_secret_value(),
                w.encoding_aes_key.get_secret_value())
    backend = WeComBackend(corp, SystemClock(settings.tz), public_url=f"http://{host}:{port}")
    seeded = seed_stores(backend, settings.stores)
    app = create_sandbox_app(backend, Driver(backend, callback_url))
    print(f"WeCom sandbox on http://{host}:{port}/cgi-bin/ for corp {corp.corp_id}; "
          f"{sum(map(len, seeded.values()))} customer groups for {len(seeded)} stores; callbacks go to {callback_url}")
    print(f"  state:   curl http://{host}:{port}/_sandbox/state")
    print(f"  members: curl -XPOST http://{host}:{port}/_sandbox/members/add -d "
          "'{\"state\": \"<store code>\", \"count\": 5, \"join\": true}'")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
