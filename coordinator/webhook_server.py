"""The admission webhook's HTTPS endpoint: ``POST /mutate-pods`` answers AdmissionReviews.

Every replica serves it, the standby too: the answer depends only on the policy file both
read, so the API server may call either (two endpoints behind the Service keep pod creation
going through a coordinator restart, which ``failurePolicy: Fail`` needs). The serving
certificate is issued from the gpuwarden CA at start
(:mod:`coordinator.backends.kubernetes.webhook` puts that CA in the configuration's
``caBundle``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from coordinator.admission import review_response
from coordinator.governance.policy import Policy

log = structlog.get_logger("coordinator.webhook")

PATH = "/mutate-pods"


class AdmissionWebhook:
    def __init__(self, policy: Policy | None, registry: CollectorRegistry | None = None) -> None:
        self.policy = policy
        self.requests = Counter(
            "gpuwarden_admission_webhook_requests",
            "AdmissionReviews answered, by outcome (gated: patched; passed: let through as is)",
            ["outcome"], registry=registry,
        )

    def set_policy(self, policy: Policy) -> None:
        """The live policy (a reload changes which namespaces are governed at once)."""
        self.policy = policy

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post(PATH, self._mutate)
        return app

    async def _mutate(self, request: web.Request) -> web.Response:
        try:
            review = await request.json()
        except ValueError:
            return web.json_response({"error": "not a JSON AdmissionReview"}, status=400)
        if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
            return web.json_response({"error": "no request in the AdmissionReview"}, status=400)
        answer = review_response(review, self.policy)
        outcome = "gated" if "patch" in answer["response"] else "passed"
        self.requests.labels(outcome).inc()
        return web.json_response(answer)


def serving_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
