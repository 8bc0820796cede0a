"""Operator endpoints: budgets, usage, cache, keys and reload. ``/admin/*`` needs the admin key."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from hoosh_edge.doors.common import gateway, read_json
from hoosh_edge.errors import InvalidRequest, NotFound, ServiceUnavailable
from hoosh_edge.exposure import last_key_message, must_keep_a_key

bp = Blueprint("admin", __name__)


def _need(attr: str) -> Any:
    value = getattr(gateway(), attr, None)
    if value is None:
        raise ServiceUnavailable(f"The {attr} is not available on this gateway.")
    return value


def _body() -> dict[str, Any]:
    body = read_json(gateway().config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _rule_view(ledger: Any, rule: Any) -> dict[str, Any]:
    """A rule as the API shows it, with its use in the current period."""
    out = rule.to_dict()
    used = ledger.rule_usage(rule) if hasattr(ledger, "rule_usage") else None
    if used is not None:
        out["used"] = rule.format_amount(used)
        out["remaining"] = rule.format_amount(max(0, rule.measured_limit - used))
    return out


@bp.get("/admin/budgets")
def list_budgets() -> Response:
    ledger = _need("ledger")
    return jsonify({"object": "list", "data": [_rule_view(ledger, r) for r in ledger.list_rules()]})


@bp.post("/admin/budgets")
def create_budget() -> tuple[Response, int]:
    ledger = _need("ledger")
    rule = ledger.create_rule(_body())
    _rules_changed()
    return jsonify(_rule_view(ledger, rule)), 201


@bp.get("/admin/budgets/<name>")
def get_budget(name: str) -> Response:
    ledger = _need("ledger")
    return jsonify(_rule_view(ledger, ledger.get_rule(name)))


@bp.patch("/admin/budgets/<name>")
def update_budget(name: str) -> Response:
    ledger = _need("ledger")
    rule = ledger.update_rule(name, _body())
    _rules_changed()
    return jsonify(_rule_view(ledger, rule))


@bp.delete("/admin/budgets/<name>")
def delete_budget(name: str) -> Response:
    _need("ledger").delete_rule(name)
    _rules_changed()
    return jsonify({"deleted": name})


@bp.get("/v1/usage")
def usage() -> Response:
    ledger = _need("ledger")
    period = request.args.get("period", "day")
    group_by = request.args.get("group_by", "provider")
    rows = ledger.usage_summary(period, group_by)
    total = sum(r.get("cost_micro_usd", 0) for r in rows)
    from hoosh_edge.books.money import format_usd

    return jsonify({"object": "list", "period": period, "group_by": group_by,
                    "total_cost_usd": format_usd(total), "data": rows})  # fmt: skip


@bp.get("/admin/cache")
def cache_stats() -> Response:
    return jsonify(_need("cache").stats())


@bp.delete("/admin/cache")
def cache_clear() -> Response:
    removed = _need("cache").clear(request.args.get("model") or None)
    return jsonify({"deleted": removed})


@bp.get("/admin/keys")
def list_keys() -> Response:
    return jsonify({"object": "list", "data": [k.to_dict() for k in _need("keys").list()]})


@bp.post("/admin/keys")
def create_key() -> tuple[Response, int]:
    body = _body()
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("'name' is required.", param="name")
    cap = None
    if body.get("budget_usd") is not None:
        # Checked before the key exists: a refused cap must not leave an uncapped key behind.
        cap = _key_budget_rule(name, body["budget_usd"], body.get("budget_period", "month"))
    record, secret = _need("keys").create(
        name,
        allowed_models=body.get("allowed_models"),
        rpm=body.get("rpm"),
        max_concurrent=body.get("max_concurrent"),
        budget_usd=body.get("budget_usd"),
    )
    if cap is not None:
        gateway().ledger.create_rule({**cap, "limit": record.budget_usd})
        _rules_changed()
    return jsonify({**record.to_dict(), "key": secret}), 201


def _key_budget_rule(name: str, usd: Any, period: Any) -> dict[str, Any]:
    """A key's own spending cap: an ordinary budget rule scoped to it, validated."""
    from hoosh_edge.books.rules import validate_rule

    rule = {"name": f"key-{name}", "scope": f"key:{name}", "metric": "usd", "limit": usd,
            "period": period, "action": "block"}  # fmt: skip
    try:
        validate_rule(rule, source="api")
    except InvalidRequest as e:
        param = {"limit": "budget_usd", "period": "budget_period"}.get(e.param or "", e.param)
        raise InvalidRequest(f"The key's budget: {e.message}", param=param) from None
    ledger = _need("ledger")
    if any(r.name == rule["name"] for r in ledger.list_rules()):
        raise InvalidRequest(f"A budget rule named '{rule['name']}' already exists.",
                             param="name", code="rule_exists")  # fmt: skip
    return rule


def _rules_changed() -> None:
    acct = gateway().accountant
    if acct is not None:
        acct.rules_changed()


@bp.delete("/admin/keys/<name>")
def revoke_key(name: str) -> Response:
    server = gateway().config.server
    keep = last_key_message(server, name) if must_keep_a_key(server) else None
    if not _need("keys").revoke(name, keep_one=keep):
        raise NotFound(f"No active key named '{name}'.")
    return jsonify({"revoked": name})


@bp.post("/admin/reload")
def reload_config() -> Response:
    reload = getattr(gateway(), "reload", None)
    if reload is None:
        raise ServiceUnavailable("Reload is not available on this gateway.")
    return jsonify(reload())
