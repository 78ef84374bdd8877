"""Entry point of every child: `python -m workers.main` (started by the supervisor only).

gevent roles monkey-patch here, first thing, before anything else is imported; the HTTP/3 role is
asyncio and is left unpatched.
"""
from __future__ import annotations

import json
import os
import sys

ROLE_MODULES = {"worker": "workers.worker", "cache-manager": "workers.cache_manager", "dht": "workers.dht",
                "http3": "workers.http3"}


def main() -> None:
    role = json.loads(os.environ["APPLIANCE_CHILD"])["role"]
    if role != "http3":
        from gevent import monkey

        monkey.patch_all()
    import importlib
    import logging

    from appliance import logs
    from appliance.supervisor import BOOT_ERROR
    from workers import child

    ctx = None
    try:
        ctx = child.load()
        logs.setup(ctx.name, ctx.verbose, ctx.config.log_file)
        logs.hide(ctx.config.secret_values())
        module = importlib.import_module(ROLE_MODULES[role])
        code = module.main(ctx)
    except child.BootError as exc:
        child.fail_boot(ctx, str(exc), BOOT_ERROR)
    except Exception as exc:
        logging.getLogger(role).exception("crashed")
        child.fail_boot(ctx, f"{exc.__class__.__name__}: {exc}", 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
