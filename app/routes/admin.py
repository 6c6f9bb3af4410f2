"""``/admin/...``: operations (always behind the API key, see ``app.security``)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import RuntimeDep
from app.schemas import ErrorResponse, ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
        403: {"model": ErrorResponse, "description": "No API key configured: admin routes are disabled."},
        409: {
            "model": ErrorResponse,
            "description": "The new version was refused; the old one keeps serving.",
        },
    },
)
async def reload(rt: RuntimeDep) -> ReloadResponse:
    """Load the index's `current` version now (also retries a version the poller refused)."""
    outcome = await rt.reloader.reload(forced=True)
    return ReloadResponse(**outcome.to_dict())
