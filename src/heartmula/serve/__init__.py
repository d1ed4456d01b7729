"""`heartmula serve`: the HTTP/WebSocket API, the persistent job queue and the web page.

    from heartmula.serve import ServeConfig, create_app
    app = create_app(ServeConfig(data_dir="data", model="ckpt"))   # a FastAPI app; run it with uvicorn
"""

from heartmula.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
