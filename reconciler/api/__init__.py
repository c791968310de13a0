"""The control API: JSON over HTTP on a unix socket (DESIGN §8), served by ``reconciler.http``.

Routes::

    GET  /api/v1/collectors[?rescan=true]   {"collectors": [...], "ready": b, "rollout_held": b}
    GET  /api/v1/collectors/{id}            collector
    POST /api/v1/collectors/{id}/restart    {"pid": new pid, **collector}
    POST /api/v1/collectors/{id}/pause      collector, once paused
    POST /api/v1/collectors/{id}/resume     collector, once running
    GET  /api/v1/events[?id=ID&limit=N]     {"events": [event...]}, oldest first
    POST /api/v1/reload                     {"reloaded": true}
    POST /api/v1/plan  {"files": {...}}     {"differences": N, "actions": [line...]}

A collector is ``CollectorView`` as JSON, with the spec in it — but never an
``env`` value (``spec.env_keys`` lists the names only), nor the password of an
HTTP health-check URL. ``rescan=true`` reads the specs directory before
answering, so that ``reconciler wait`` right after a push sees what was pushed.

Errors have the body ``{"error": {"code", "category", "message"}}``: every
``ReconcilerError`` with its own code and HTTP status (DESIGN §5); besides
those, protocol errors that name no collector — ``NOT_FOUND`` (404, Resource)
for an unknown route, ``METHOD_NOT_ALLOWED`` (405, Resource), ``BAD_REQUEST``
(400, Configuration) for a bad query parameter or body, and for a request the HTTP
parser refuses (``reconciler.http``) — and ``INTERNAL`` (500, Internal) for
a bug, which is logged with its traceback.

Pause, resume and restart are operator overrides (DESIGN §7) carried out by the
reconcile loop; these handlers set them and wait, bounded, until they have
taken effect, so that a client's "web paused" is true when it is printed.

``reconciler.daemon`` starts an ``ApiServer`` next to the loop; the CLI's
client commands (``status``, ``pause``, ``wait`` ...) are its users.
"""

from reconciler.api.server import ApiServer
from reconciler.api.views import event_to_json, iso_time, spec_to_json, view_to_json

__all__ = ["ApiServer", "event_to_json", "iso_time", "spec_to_json", "view_to_json"]
