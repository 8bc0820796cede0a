"""Operator endpoints: budgets, usage, cache, keys and reload. ``/admin/*`` needs the admin key."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from hoosh_edge.books.money import format_usd
from hoosh_edge.books.rules import validate_rule
from hoosh_edge.books.tally import RuleState
from hoosh_edge.doors.common import gateway, read_json
from hoosh_edge.errors import InvalidRequest, NotFound
from hoosh_edge.exposure import last_key_message, must_keep_a_key

bp = Blueprint("admin", __name__)


def _body() -> dict[str, Any]:
    body = read_json(gateway().config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _rule_view(state: RuleState) -> dict[str, Any]:
    """A rule as the API shows it: committed use, open reservations and what is left."""
    return state.rule.to_dict() | state.figures()


def _rule_views(only: str | None = None) -> list[dict[str, Any]]:
    """Every rule's view (or just the one named ``only``), from the ledger's one read model."""
    return [_rule_view(s) for s in gateway().ledger.rule_states()
            if only is None or s.rule.name == only]  # fmt: skip


def _one(name: str) -> dict[str, Any]:
    views = _rule_views(name)
    if not views:  # deleted between the change and this read
        raise NotFound(f"No budget rule named '{name}'.", param="name")
    return views[0]


@bp.get("/admin/budgets")
def list_budgets() -> Response:
    return jsonify({"object": "list", "data": _rule_views()})


@bp.post("/admin/budgets")
def create_budget() -> tuple[Response, int]:
    rule = gateway().ledger.create_rule(_body())
    _rules_changed()
    return jsonify(_one(rule.name)), 201


@bp.get("/admin/budgets/<name>")
def get_budget(name: str) -> Response:
    return jsonify(_one(gateway().ledger.get_rule(name).name))


@bp.patch("/admin/budgets/<name>")
def update_budget(name: str) -> Response:
    rule = gateway().ledger.update_rule(name, _body())
    _rules_changed()
    return jsonify(_one(rule.name))


@bp.delete("/admin/budgets/<name>")
def delete_budget(name: str) -> Response:
    gateway().ledger.delete_rule(name)
    _rules_changed()
    return jsonify({"deleted": name})


@bp.get("/v1/usage")
def usage() -> Response:
    ledger = gateway().ledger
    period = request.args.get("period", "day")
    group_by = request.args.get("group_by", "provider")
    rows = ledger.usage_summary(period, group_by)
    total = sum(r.get("cost_micro_usd", 0) for r in rows)
    return jsonify({"object": "list", "period": period, "group_by": group_by,
                    "total_cost_usd": format_usd(total), "data": rows})  # fmt: skip


@bp.get("/admin/cache")
def cache_stats() -> Response:
    return jsonify({**gateway().cache.stats(), "semantic": gateway().semantic.stats()})


@bp.delete("/admin/cache")
def cache_clear() -> Response:
    model = request.args.get("model") or None
    removed = gateway().cache.clear(model)
    if model is None:  # a model's rows go when met: their answers are gone
        gateway().semantic.clear()
    return jsonify({"deleted": removed})


@bp.get("/admin/keys")
def list_keys() -> Response:
    return jsonify({"object": "list", "data": [k.to_dict() for k in gateway().keys.list()]})


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
    record, secret = gateway().keys.create(
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
    rule = {"name": f"key-{name}", "scope": f"key:{name}", "metric": "usd", "limit": usd,
            "period": period, "action": "block"}  # fmt: skip
    try:
        validate_rule(rule, source="api")
    except InvalidRequest as e:
        param = {"limit": "budget_usd", "period": "budget_period"}.get(e.param or "", e.param)
        raise InvalidRequest(f"The key's budget: {e.message}", param=param) from None
    if any(r.name == rule["name"] for r in gateway().ledger.list_rules()):
        raise InvalidRequest(f"A budget rule named '{rule['name']}' already exists.",
                             param="name", code="rule_exists")  # fmt: skip
    return rule


def _rules_changed() -> None:
    gateway().accountant.rules_changed()


@bp.delete("/admin/keys/<name>")
def revoke_key(name: str) -> Response:
    server = gateway().config.server
    keep = last_key_message(server, name) if must_keep_a_key(server) else None
    if not gateway().keys.revoke(name, keep_one=keep):
        raise NotFound(f"No active key named '{name}'.")
    return jsonify({"revoked": name})


@bp.post("/admin/reload")
def reload_config() -> Response:
    return jsonify(gateway().reload())
