"""The Flask application."""

from __future__ import annotations

from flask import Flask, Response, jsonify

from . import PROJECT_NAME


def create_app() -> Flask:
    """Build the application: ``/`` greets, ``/healthz`` answers the HEALTHCHECK."""
    app = Flask(__name__)

    @app.get("/")
    def index() -> Response:
        return jsonify(name=PROJECT_NAME, message="Hello from the app image.")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    return app
